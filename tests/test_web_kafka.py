"""Web views of live workers on the real broker: ``/messages`` routed to the owning worker,
the Altcraft webhook ingress, bearer tokens, safe defaults and ``/health/live`` after an agent
crash (faust issues #175/#523).

The module fixture ``pair`` runs two workers of one app with a web token and an ingest token;
the single-worker tests start their own worker. Every wait is bounded.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.kafka_fixtures import consume_all_sync, create_topics, delete_topics, produce_sync
from tests.worker_harness import (
    BASIC,
    WorkerPool,
    delete_app_topics,
    expected_report,
    http_get,
    produce_scenario,
    wait_until,
    worker_env,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

INPUT_PARTITIONS = {"activity_sync": 3, "altcraft": 2}
OUTPUT_PARTITIONS = {"dead_letters": 1, "alerts": 1, "funnel_windows": 1}
WEB_TOKEN = "web-" + secrets.token_hex(8)
INGEST_TOKEN = "ingest-" + secrets.token_hex(8)
MAX_EVENT_BYTES = 4096
EXTRA_TENANT = "7001"  # altcraft account of the extra messages produced for routing
WEIRD_ID = "a|b%c/d e"  # needs escaping in the table key and in URLs


# ------------------------------------------------------------------------------ helpers


def _make_topics(bootstrap: str, suffix: str) -> dict[str, str]:
    parts = {**INPUT_PARTITIONS, **OUTPUT_PARTITIONS}
    topics = {role: f"fwweb-{role.replace('_', '-')}-{suffix}" for role in parts}
    asyncio.run(create_topics(bootstrap, {topics[r]: n for r, n in parts.items()}))
    return topics


def _cleanup(bootstrap: str, topics: dict[str, str], app_id: str) -> None:
    try:
        asyncio.run(delete_topics(bootstrap, list(topics.values())))
    except Exception:  # noqa: BLE001 - best effort
        pass
    delete_app_topics(bootstrap, app_id)


def _get(url: str, token: str | None = None, how: str = "bearer") -> tuple[int, Any]:
    headers = {}
    if token is not None and how == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    elif token is not None and how == "header":
        headers["X-Funnelwatch-Token"] = token
    elif token is not None and how == "query":
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"token": token})
    status, body = http_get(url, timeout_s=10, headers=headers)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> dict[int, int]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, client_id="funnelwatch-tests")
        await c.start()
        try:
            parts = c.partitions_for_topic(topic) or set()
            if not parts:
                await c._client.force_metadata_update()
                parts = c.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            ends = await c.end_offsets(tps)
            return {tp.partition: off for tp, off in ends.items()}
        finally:
            await c.stop()

    return asyncio.run(run())


def _hook(event_type: str, account: str, mid: str, when: str, **extra: Any) -> dict[str, Any]:
    return {"event_type": event_type, "event_date": when, "account_id": int(account), "is_test": False,
            "list_id": 1, "custom_data": {"email": "someone@example.org"},
            "event_data": {"send_message_id": mid, "campaign_id": 1, **extra}}


def _msg_path(source: str, tenant: str, mid: str) -> str:
    return "/messages?" + urllib.parse.urlencode({"source": source, "tenant": tenant, "id": mid})


def _listen_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on ``port`` (from /proc/net/tcp{,6})."""
    out: set[str] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.split(":")
            if int(port_hex, 16) != port or state != "0A":
                continue
            if len(addr_hex) == 8:
                out.add(".".join(str(b) for b in reversed(bytes.fromhex(addr_hex))))
            else:
                out.add("v6:" + addr_hex)
    return out


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def pair(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):
    """Two workers of one app (web token + ingest token), fed the golden scenario plus extra
    Altcraft messages (so both workers own some keys)."""
    suffix = secrets.token_hex(4)
    app_id = f"fwtest-web-{suffix}"
    tmp = tmp_path_factory.mktemp("web-pair")
    topics = _make_topics(kafka_bootstrap, suffix)
    extra = {"FUNNELWATCH_WEB_TOKEN": WEB_TOKEN, "FUNNELWATCH_INGEST_TOKEN": INGEST_TOKEN,
             "FUNNELWATCH_MAX_EVENT_BYTES": str(MAX_EVENT_BYTES)}
    pool = WorkerPool(tmp)
    try:
        w1 = pool.start("w1", worker_env(app_id=app_id, bootstrap=kafka_bootstrap, topics=topics,
                                         data_dir=tmp / "w1", extra=extra))
        w2 = pool.start("w2", worker_env(app_id=app_id, bootstrap=kafka_bootstrap, topics=topics,
                                         data_dir=tmp / "w2", extra=extra))
        for w in (w1, w2):
            wait_until(lambda w=w: w.check_alive() or "Worker ready" in w.log_text(), 60, 0.3,
                       f"{w.name} ready")
        produce_scenario(kafka_bootstrap, topics, INPUT_PARTITIONS, BASIC)
        ids = [f"r{i}" for i in range(24)] + [WEIRD_ID]
        produce_sync(kafka_bootstrap, topics["altcraft"],
                     [(None, json.dumps(_hook("send", EXTRA_TENANT, mid, "2024-08-27T15:00:00Z")).encode(), None)
                      for mid in ids])
        expected = expected_report()["windows"]

        def complete(w) -> bool:
            status, body = _get(w.base_url + "/funnel", WEB_TOKEN)
            if status != 200:
                return False
            rows = body["windows"]
            extra_rows = [r for r in rows if r["tenant"] == EXTRA_TENANT]
            return ([r for r in rows if r["tenant"] != EXTRA_TENANT] == expected
                    and sum(r["entered"] for r in extra_rows) == len(ids))

        for w in (w1, w2):
            wait_until(lambda w=w: w.check_alive() or complete(w), 60, 0.5, f"{w.name} complete funnel")
        yield SimpleNamespace(w1=w1, w2=w2, workers=(w1, w2), topics=topics, app_id=app_id,
                              bootstrap=kafka_bootstrap, extra_ids=ids)
    finally:
        pool.stop_all()
        _cleanup(kafka_bootstrap, topics, app_id)


# --------------------------------------------------------------------------------- tests


def test_messages_answer_from_both_workers_for_keys_owned_by_either(pair) -> None:
    keys = [("altcraft", EXTRA_TENANT, mid) for mid in pair.extra_ids] + [
        ("activity_sync", "foo", m) for m in ("m1", "m2", "m3", "m4")] + [
        ("altcraft", "23", "a1"), ("altcraft", "23", "a2")]
    served_by: dict[tuple[str, str, str], str] = {}
    bodies: dict[tuple[str, str, str], dict] = {}
    for key in keys:
        # Same answer, whichever worker was asked. The messages are long overdue, so a stuck
        # alert may land between the two requests: retry (bounded) until both see one state.
        deadline = time.monotonic() + 15
        while True:
            answers = []
            for w in pair.workers:
                status, body = _get(w.base_url + _msg_path(*key), WEB_TOKEN)
                assert status == 200, (w.name, key, status, body)
                answers.append(body)
            if answers[0] == answers[1] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert answers[0] == answers[1], key
        served_by[key] = answers[0]["served_by"]
        bodies[key] = answers[0]
    assert set(served_by.values()) == {w.base_url for w in pair.workers}, served_by

    # The path form answers the same (ids without '/').
    for key in [("activity_sync", "foo", "m2"), ("altcraft", "23", "a1")]:
        for w in pair.workers:
            status, body = _get(w.base_url + "/messages/" + "/".join(urllib.parse.quote(p, safe="") for p in key),
                                WEB_TOKEN)
            assert status == 200 and body == bodies[key], (w.name, key, status, body)

    m2 = bodies[("activity_sync", "foo", "m2")]
    assert m2["channel"] == "email" and m2["outcome"] == "delivered" and not m2["conflicting"]
    assert [s["stage"] for s in m2["stages"]] == ["queued", "sent", "delivered", "opened", "clicked"]
    assert m2["stages"][0]["at"] == "2024-08-27T13:40:00Z"
    assert (m2["opens_total"], m2["clicks_total"]) == (2, 1)
    assert m2["window_start"] == "2024-08-27T13:00:00Z" and m2["stuck"] is None
    # Shuffled input can make m2 look stuck for a moment (its 2024 deadlines are long past): any
    # stuck alert it got must be resolved by now, and none is open.
    stuck_stages = {a["stage"] for a in m2["alerts"] if a["type"] == "stuck"}
    assert not any(a.get("open") for a in m2["alerts"])
    assert {a["stage"]: a["resolved_stage"] for a in m2["alerts"] if a["type"] == "resolved"} == {
        s: "clicked" for s in stuck_stages}

    a2 = bodies[("altcraft", "23", "a2")]
    assert (a2["channel"], a2["outcome"], a2["failed_at"]) == ("sms", "failed", "2024-08-27T13:21:00Z")

    m4 = bodies[("activity_sync", "foo", "m4")]
    assert (m4["channel"], m4["outcome"], m4["stages"]) == ("unknown", "failed", [])

    # m3 is stuck at queued (SPEC §6 example): deadline, stuck now, and the alert mark once raised.
    def m3_alerted(w) -> Any:
        status, body = _get(w.base_url + _msg_path("activity_sync", "foo", "m3"), WEB_TOKEN)
        return status == 200 and body["alerts"] and body

    m3 = wait_until(lambda: m3_alerted(pair.w2), 30, 0.5, "m3 stuck alert mark")
    assert m3["stuck"] == {"stage": "queued", "since": "2024-08-27T13:00:00Z", "deadline": "2024-08-27T13:02:00Z",
                           "sla_seconds": 120, "stuck_now": True, "alerted": True}
    assert m3["alerts"] == [{"type": "stuck", "stage": "queued", "since": "2024-08-27T13:00:00Z", "open": True}]

    weird = bodies[("altcraft", EXTRA_TENANT, WEIRD_ID)]
    assert weird["message_id"] == WEIRD_ID and weird["stages"][0]["stage"] == "sent"

    # No PII in any answer.
    blob = json.dumps(list(bodies.values()))
    for needle in ("example.org", "alice", "someone", "custom_data", "email\":"):
        assert needle not in blob


def test_messages_errors(pair) -> None:
    for w in pair.workers:
        for mid in ("no-such-message", "r9999"):
            status, body = _get(w.base_url + _msg_path("altcraft", EXTRA_TENANT, mid), WEB_TOKEN)
            assert status == 404 and body["error"] == "unknown message", (w.name, status, body)
        status, body = _get(w.base_url + "/messages/kinesis/foo/m1", WEB_TOKEN)
        assert status == 400 and "unknown source" in body["error"]
        status, body = _get(w.base_url + "/messages?source=altcraft&tenant=&id=x", WEB_TOKEN)
        assert status == 400


def test_ingress_produces_acknowledged_hooks_and_rejects_bad_requests(pair) -> None:
    topic = pair.topics["altcraft"]
    url = pair.w1.base_url + "/ingest/altcraft"
    before = _end_offsets(pair.bootstrap, topic)
    auth = {"X-Funnelwatch-Token": INGEST_TOKEN}
    good = json.dumps(_hook("send", "7002", "h1", "2024-08-27T16:00:00Z")).encode()

    rejected = [
        (good, {}, 401),
        (good, {"X-Funnelwatch-Token": "wrong"}, 401),
        (good, {"Authorization": f"Bearer {WEB_TOKEN}"}, 401),  # the web token is not the ingest token
        (b'{"event_type": "send", "pad": "' + b"x" * MAX_EVENT_BYTES + b'"}', auth, 413),
        (b'{"event_type": "send", ', auth, 400),
        (b"not json", auth, 400),
        (b"[1, 2]", auth, 400),
        (b'"a string"', auth, 400),
        (b"[]", auth, 400),
        (good + b" trailing", auth, 400),
        (b'[' + good + b', 3]', auth, 400),
        (b'{"event_type": "send", "x": NaN}', auth, 400),
    ]
    for body, headers, want in rejected:
        status, answer = _post(url, body, headers)
        assert status == want, (body[:60], headers, status, answer)
        assert isinstance(answer, dict) and answer.get("error"), answer
    # GET is not an ingress method.
    status, _ = _get(url, INGEST_TOKEN)
    assert status == 405
    assert _end_offsets(pair.bootstrap, topic) == before  # nothing produced for rejected requests

    # One hook (exact bytes kept, odd spacing included), Authorization: Bearer.
    single = b'  {"event_type":"send",  "event_date": "2024-08-27T16:00:00Z", "account_id": 7002, "is_test": false,' \
             b' "event_data": {"send_message_id": "h1"}}\n'
    status, answer = _post(url, single, {"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert status == 202 and answer["accepted"] == 1, answer
    # An array of hooks, token in the query; each element produced with its own bytes.
    elems = [json.dumps(_hook("deliv", "7002", "h1", "2024-08-27T16:01:00Z")).encode(),
             json.dumps(_hook("open", "7002", "h1", "2024-08-27T16:05:00Z"), indent=1).encode(),
             json.dumps(_hook("send_sms", "7002", "h2", "2024-08-27T16:02:00Z")).encode()]
    array = b"[" + b" ,\n ".join(elems) + b"]"
    status, answer = _post(url + "?" + urllib.parse.urlencode({"token": INGEST_TOKEN}), array)
    assert status == 202 and answer["accepted"] == 3, answer

    after = _end_offsets(pair.bootstrap, topic)
    assert sum(after.values()) - sum(before.values()) == 4
    records = consume_all_sync(pair.bootstrap, topic, timeout_s=15, min_records=sum(after.values()))
    produced = [r.value for r in records
                if r.offset >= before.get(r.partition, 0)]
    assert sorted(produced) == sorted([single.strip()] + elems)
    for m in answer["records"]:  # the acknowledged offsets are real
        assert before.get(m["partition"], 0) <= m["offset"] < after[m["partition"]]

    # Processed by the pipeline: visible in /funnel and /messages on the other worker too.
    want = [{"window_start": "2024-08-27T16:00:00Z", "tenant": "7002", "channel": "email", "entered": 1,
             "queued": 0, "sent": 1, "delivered": 1, "opened": 1, "clicked": 0, "failed": 0, "soft_bounced": 0,
             "complained": 0, "unsubscribed": 0, "opens_total": 1, "clicks_total": 0},
            {"window_start": "2024-08-27T16:00:00Z", "tenant": "7002", "channel": "sms", "entered": 1,
             "queued": 0, "sent": 1, "delivered": 0, "opened": 0, "clicked": 0, "failed": 0, "soft_bounced": 0,
             "complained": 0, "unsubscribed": 0, "opens_total": 0, "clicks_total": 0}]

    def funnel_shows() -> bool:
        status, body = _get(pair.w2.base_url + "/funnel?tenant=7002", WEB_TOKEN)
        return status == 200 and body["windows"] == want

    wait_until(funnel_shows, 30, 0.5, "ingested hooks in /funnel")
    status, body = _get(pair.w2.base_url + _msg_path("altcraft", "7002", "h1"), WEB_TOKEN)
    assert status == 200 and [s["stage"] for s in body["stages"]] == ["sent", "delivered", "opened"]


def test_web_token_guards_every_view_but_health(pair) -> None:
    base = pair.w1.base_url
    guarded = ["/", "/funnel", "/alerts", "/metrics", "/stats", _msg_path("activity_sync", "foo", "m1"),
               "/messages/activity_sync/foo/m1", "/funnel?local=1", "/alerts?local=1", "/stats?local=1",
               "/funnel?by=campaign", "/funnel?by=campaign&local=1", "/latency", "/latency?local=1"]
    for path in guarded:
        status, body = _get(base + path)
        assert status == 401 and isinstance(body, dict) and body.get("error"), (path, status, body)
        status, _ = _get(base + path, "wrong-token")
        assert status == 401, path
        for how in ("bearer", "header", "query"):
            status, body = _get(base + path, WEB_TOKEN, how)
            assert status == 200, (path, how, status, body)
    for path in ("/health/live", "/health/ready"):
        status, body = _get(base + path)
        assert status == 200, (path, status, body)
    # faust's own views stay off by default.
    for path in ("/router", "/router/", "/table", "/table/", "/graph", "/stats/assignment/"):
        status, _ = _get(base + path, WEB_TOKEN)
        assert status == 404, path
    # Each worker's web server binds the configured host only (127.0.0.1 here).
    assert _listen_addresses(pair.w1.port) == {"127.0.0.1"}


def test_stats_sum_dead_letters_over_both_workers(pair) -> None:
    for w in pair.workers:
        status, body = _get(w.base_url + "/stats", WEB_TOKEN)
        assert status == 200
        assert body["workers"] == 2
        assert body["dead_letters_by_reason"] == expected_report()["input"]["rejected"]
        assert body["dead_letters_total"] == 3
        assert body["ignored"] == {"altcraft": {"test_event": 1}}


def test_defaults_bind_loopback_no_faust_views_no_ingress_and_live_turns_503_on_agent_crash(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    suffix = secrets.token_hex(4)
    app_id = f"fwtest-webcrash-{suffix}"
    topics = _make_topics(kafka_bootstrap, suffix)
    crash_kind = "funnelwatch-test-crash"
    env = worker_env(app_id=app_id, bootstrap=kafka_bootstrap, topics=topics, data_dir=tmp_path / "w1",
                     extra={"FUNNELWATCH_TEST_CRASH_KIND": crash_kind})
    del env["FUNNELWATCH_WEB_HOST"]  # the default must be loopback
    try:
        with WorkerPool(tmp_path) as pool:
            w = pool.start("w1", env)
            w.wait_ready(60)
            assert _listen_addresses(w.port) == {"127.0.0.1"}
            for path in ("/router", "/router/", "/table", "/table/", "/graph", "/stats/assignment/"):
                assert _get(w.base_url + path)[0] == 404, path
            # No web token configured: views are open; no ingest token: ingress is disabled.
            for path in ("/", "/funnel", "/alerts", "/stats", "/metrics"):
                assert _get(w.base_url + path)[0] == 200, path
            status, body = _post(w.base_url + "/ingest/altcraft", b"{}", {"X-Funnelwatch-Token": "x"})
            assert status == 404 and "disabled" in body["error"]

            status, body = _get(w.base_url + "/health/live")
            assert status == 200 and body["live"] is True and body["problems"] == []
            status, body = _get(w.base_url + "/health/ready")
            assert status == 200 and body["consumer_running"] and body["partitions_recovered"]

            record = json.dumps({"version": "1.0", "timestamp": "2024-08-27T13:00:00Z", "tenantId": "foo",
                                 "kind": crash_kind, "data": {"messageId": "boom"}}).encode()
            produce_sync(kafka_bootstrap, topics["activity_sync"], [(None, record, 0)])
            t0 = time.monotonic()

            def unhealthy() -> Any:
                status, body = _get(w.base_url + "/health/live")
                return status == 503 and body

            body = wait_until(unhealthy, 10, 0.2, "/health/live 503 after the agent crash")
            assert time.monotonic() - t0 < 10
            assert body["live"] is False and "ingest-activity-sync" in body["crashed_agents"], body
            assert w.alive()  # the process lives on: that is why the probe has to notice
            # faust restarts the actor, which carries on after the lost record: the probe stays
            # unhealthy until the process restarts.
            time.sleep(6)
            status, body = _get(w.base_url + "/health/live")
            assert status == 503 and body["agent_crashes"] >= 1
            assert "boom" not in json.dumps(body)
    finally:
        _cleanup(kafka_bootstrap, topics, app_id)
