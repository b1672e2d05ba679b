"""Every view of a live worker under hostile requests (hypothesis, raw HTTP on a socket):
arbitrary methods, paths (percent-encoded and raw non-UTF-8 bytes, slashes, very long),
query strings, headers and bodies. The answer is always 2xx, 4xx or 503, every error is a
JSON ``{"error": ...}`` that repeats nothing of the request (a random canary is planted in
each one), every response carries the security headers, the worker keeps serving, and
nothing reaches Kafka from a rejected request. Bounded: 300 well-formed requests (arbitrary content in valid HTTP) and 200 hostile ones
(raw bytes in the request line, unknown methods, over-long lines and headers).
"""
from __future__ import annotations

import json
import secrets
import socket
from collections import Counter
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_web_kafka import _end_offsets
from tests.worker_harness import (
    WorkerPool,
    expected_report,
    fresh_app_topics,
    http_get,
    produce_scenario,
    wait_until,
    worker_env,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

WEB_TOKEN = "web-" + secrets.token_hex(8)
INGEST_TOKEN = "ingest-" + secrets.token_hex(8)
PARTS = {"activity_sync": 2, "altcraft": 2, "dead_letters": 1, "alerts": 1, "funnel_windows": 1}
SECURITY_HEADERS = ("x-content-type-options", "referrer-policy", "cache-control")


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):
    with fresh_app_topics(kafka_bootstrap, "fwfuzz", PARTS) as (app_id, topics):
        produce_scenario(kafka_bootstrap, topics, {"activity_sync": 2, "altcraft": 2})
        tmp = tmp_path_factory.mktemp("fuzz")
        env = worker_env(app_id=app_id, bootstrap=kafka_bootstrap, topics=topics, data_dir=tmp / "w1",
                         topic_partitions=2, extra={"FUNNELWATCH_WEB_TOKEN": WEB_TOKEN,
                                                    "FUNNELWATCH_INGEST_TOKEN": INGEST_TOKEN,
                                                    "FUNNELWATCH_MAX_EVENT_BYTES": "4096"})
        with WorkerPool(tmp) as pool:
            w = pool.start("w1", env)
            want = expected_report()["windows"]

            def funnel_done() -> bool:
                status, raw = http_get(w.base_url + "/funnel", 5, {"Authorization": f"Bearer {WEB_TOKEN}"})
                return status == 200 and json.loads(raw)["windows"] == want

            wait_until(funnel_done, 60, desc="/funnel equal to the golden report")
            yield w, topics, kafka_bootstrap


def raw_request(port: int, head: bytes, body: bytes, timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (request line and headers, no blank line) and ``body``; read to the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head_raw, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        payload = out
    return status, headers, payload


def _pct(b: bytes) -> str:
    return "".join(f"%{x:02X}" for x in b)


canary = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=12, max_size=12).map(lambda s: "zq" + s)
encoded = st.one_of(st.text(max_size=40).map(lambda t: quote(t, safe="")), st.binary(max_size=30).map(_pct))
hostile_part = st.one_of(
    st.binary(min_size=1, max_size=20).map(lambda b: b.decode("latin-1")),  # raw bytes, often not UTF-8
    st.sampled_from(["..", "%2F", "a/b", "", "%00", "%FF%FE", "/", "//", "%", "%zz"]),
    st.integers(min_value=100, max_value=100_000).map(lambda n: "x" * n),  # very long
)
BASES = ["/", "/funnel", "/alerts", "/messages", "/stats", "/metrics", "/health/live", "/health/ready",
         "/ingest/altcraft", "/latency"]
QKEYS = ["limit", "offset", "from", "to", "tenant", "channel", "stage", "local", "token", "source", "id",
         "message_id", "by", "campaign"]
QVALS = ["99999999999999999999", "-1", "0", "1", "1000", "1001", "1e9", "2024-08-27T13:00:00Z",
         "9999-12-31T23:59:59Z", "0000-01-01T00:00:00Z", "", "sms", "queued", "activity_sync", "1", "campaign",
         "window", "null", "altcraft:1"]
HOOK = b'{"event_type": "deliv", "event_date": "2024-08-27T13:00:00Z", "account_id": 7, "event_data": {}}'
auth = st.sampled_from(["web", "web", "web", "none", "wrong", "ingest", "ingest", "ingest-bearer", "query"])
body = st.one_of(
    st.just(b""), st.binary(max_size=2000),
    st.sampled_from([b"{}", b"[]", b"[{}]", HOOK, b"[" + HOOK + b"," + HOOK + b"]", b"null", b"[1,2]",
                     b'{"a": NaN}', b"{" * 5000, b"x" * 5000]),
)


def request_parts(hostile: bool) -> dict[str, Any]:
    """Strategies of one request: well-formed HTTP with arbitrary content, or hostile HTTP."""
    segment = st.one_of(encoded, st.sampled_from(["activity_sync", "altcraft", "acme", "23", "m1"]),
                        *([hostile_part] * 2 if hostile else []))
    path = st.one_of(
        *[st.sampled_from(BASES)] * 4,
        st.tuples(st.sampled_from(["activity_sync", "altcraft", "kinesis"]), segment, segment).map(
            lambda t: "/messages/" + "/".join(t)),
        st.lists(segment, min_size=1, max_size=5).map(lambda segs: "/messages/" + "/".join(segs)),
        st.tuples(st.sampled_from(BASES), segment).map(lambda t: t[0].rstrip("/") + "/" + t[1]),
    )
    qkey = st.one_of(st.sampled_from(QKEYS), st.text(max_size=10).map(lambda t: quote(t, safe="")))
    qval = st.one_of(st.sampled_from(QVALS), st.integers().map(str), encoded, *([hostile_part] if hostile else []))
    printable = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=100)
    header_value = st.one_of(printable, st.integers(min_value=1000, max_value=20_000).map(lambda n: "h" * n),
                             st.binary(max_size=40).map(lambda b: b.decode("latin-1").replace("\r", "").replace(
                                 "\n", ""))) if hostile else printable
    extra_header = st.tuples(
        st.sampled_from(["Accept", "Content-Type", "X-Forwarded-For", "X-Funnelwatch-Forwarded", "Origin",
                         "Cookie", "X-Fuzz", "Range", "If-None-Match", "Accept-Encoding"]), header_value)
    methods = ["GET"] * 8 + ["POST"] * 3 + ["PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]
    return {"method": st.one_of(*[st.sampled_from(methods)] * 4, st.sampled_from(["TRACE", "BREW", "get"]))
            if hostile else st.sampled_from(methods), "path": path,
            "query": st.lists(st.tuples(qkey, qval), max_size=5), "auth": auth,
            "headers": st.lists(extra_header, max_size=3), "body": body, "canary": canary,
            "plant": st.sampled_from(["path", "query", "query", "header", "body"])}


@pytest.mark.parametrize(("hostile", "examples"), [(False, 300), (True, 200)], ids=["well-formed", "hostile"])
def test_fuzz_every_view(worker, hostile: bool, examples: int) -> None:
    w, topics, bootstrap = worker
    before = _end_offsets(bootstrap, topics["altcraft"])
    accepted: Counter = Counter()
    reasons: Counter = Counter()
    tally: Counter = Counter()

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(**request_parts(hostile))
    def one(method: str, path: str, query: list, auth: str, headers: list, body: bytes, canary: str,
            plant: str) -> None:
        if plant == "path":
            path = f"/messages/activity_sync/acme/{canary}"
        elif plant == "query":
            query = [*query, ("tenant", canary)]
        elif plant == "header":
            headers = [*headers, ("X-Fuzz", canary)]
        else:
            body = body + canary.encode()
        q = list(query)
        hdrs = [("Host", "127.0.0.1"), *headers]
        if auth == "web":
            hdrs.append(("Authorization", f"Bearer {WEB_TOKEN}"))
        elif auth == "wrong":
            hdrs.append(("Authorization", "Bearer wrong-" + canary))
        elif auth == "ingest":
            hdrs.append(("X-Funnelwatch-Token", INGEST_TOKEN))
        elif auth == "ingest-bearer":
            hdrs.append(("Authorization", f"Bearer {INGEST_TOKEN}"))
        elif auth == "query":
            q.append(("token", WEB_TOKEN))
        target = path + ("?" + "&".join(f"{k}={v}" for k, v in q) if q else "")
        head = f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
        head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in hdrs)
        status, rh, payload = raw_request(w.port, head, body)
        tally[status] += 1
        where = f"{method} {target[:200]!r} -> {status} {payload[:300]!r}"
        assert 200 <= status < 300 or 400 <= status < 500 or status == 503, where
        assert canary.encode() not in payload and canary not in json.dumps(rh), where
        for name in SECURITY_HEADERS:
            assert name in rh, (name, where)
        if status >= 400 and method != "HEAD":
            assert rh.get("content-type", "").startswith("application/json"), where
            err = json.loads(payload)
            assert isinstance(err, dict) and isinstance(err.get("error"), str), where
            reasons[f"{status} {err['error'][:48]}"] += 1
        if status == 202:
            accepted["records"] += json.loads(payload)["accepted"]

    one()
    w.check_alive()
    st_live, live = w.get_json("/health/live")
    assert st_live == 200 and live["live"], live
    after = _end_offsets(bootstrap, topics["altcraft"])
    grew = sum(after.values()) - sum(before.values())
    assert grew == accepted["records"], (grew, accepted)  # only 202s reached Kafka
    print(f"\nfuzz ({'hostile' if hostile else 'well-formed'}): {sum(tally.values())} requests, status codes {dict(sorted(tally.items()))}, "
          f"{accepted['records']} hooks accepted; errors: {dict(reasons.most_common(12))}")


def test_huge_offset_is_a_400_naming_it(worker) -> None:
    """Regression: ``/alerts?offset=99999999999999999999`` answered 500 (the offset was echoed
    back and did not fit the JSON encoder)."""
    w, _, _ = worker
    head = f"GET /alerts?offset=99999999999999999999 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WEB_TOKEN}\r\n"
    status, _, payload = raw_request(w.port, head.encode(), b"")
    err = json.loads(payload)
    assert status == 400 and "'offset'" in err["error"] and "99999999999999999999" not in payload.decode(), err


def test_very_long_path_gets_our_json_without_echo(worker) -> None:
    """Regression: a 100,000-character path got aiohttp's text 400 echoing the request line."""
    w, _, _ = worker
    long_id = "q" * 100_000
    head = f"GET /messages/activity_sync/{long_id}/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WEB_TOKEN}\r\n"
    status, rh, payload = raw_request(w.port, head.encode(), b"")
    assert status == 400 and rh["content-type"].startswith("application/json"), (status, payload[:200])
    assert "qqqqqqqqqq" not in payload.decode() and "activity_sync" not in payload.decode()
    assert isinstance(json.loads(payload)["error"], str)
    assert w.get_json("/health/live")[0] == 200
