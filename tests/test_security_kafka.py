"""Hostile input and exposure on a real broker: poison records (SPEC §7), PII canaries
(SPEC §8), a tenant-cardinality flood (SPEC §10) and the web server's exposure.

Each test starts its own ``funnelwatch worker`` (tests/worker_harness.py) on fresh topics
and checks what leaves it: the dead-letter topic and its headers, the alert, funnel-window,
changelog and repartition topics, the worker log, ``/metrics`` and every web view.
Every wait is bounded; every test prints its figures.
"""
from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from streams.kinds import AC_LIFECYCLE, AS_NON_LIFECYCLE, altcraft_non_lifecycle
from tests.kafka_fixtures import consume_all_sync, produce_sync
from tests.test_chaos_kafka import INPUT_PARTITIONS, Rig, metrics_of, msum
from tests.worker_harness import REPO_ROOT, Worker, app_topics, funnelwatch_bin, http_get, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

MAX_EVENT_BYTES = 65536
DLQ_HEADERS = ("dlq.reason", "dlq.source.topic", "dlq.source.partition", "dlq.source.offset", "dlq.error")


def log(msg: str) -> None:
    print(f"[security] {msg}", flush=True)


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@pytest.fixture
def rig(kafka_bootstrap: str, tmp_path: Path):
    r = Rig(kafka_bootstrap, tmp_path, "sec")
    try:
        yield r
    finally:
        r.close()


def start_worker(rig: Rig, name: str, **extra: str) -> Worker:
    env = rig.env(rig.tmp / name, FUNNELWATCH_STORE="memory://", **extra)
    w = rig.pool.start(name, env)
    w.wait_ready(60)
    return w


def wait_input_consumed(rig: Rig, w: Worker, timeout_s: float = 60) -> None:
    """Committed lag 0 on the input topics and the internal topic."""
    last: dict = {}

    def ok() -> bool:
        w.check_alive()
        last.clear()
        last.update({f"{t}/{p}": n for (t, p), n in rig.lag().items() if n})
        return not last

    try:
        wait_until(ok, timeout_s, 0.5, "consumer lag 0")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {last}\n{w.log_tail(20)}") from None


def replay_with_limit(rig: Rig, records: list[bytes], max_event_bytes: int) -> dict[str, Any]:
    path = rig.tmp / f"replay-{secrets.token_hex(3)}.jsonl"
    path.write_bytes(b"".join(r + b"\n" for r in records))
    proc = subprocess.run([funnelwatch_bin(), "replay", "--json", "--max-event-bytes", str(max_event_bytes),
                           str(path)], capture_output=True, timeout=60, cwd=str(REPO_ROOT))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)


# =============================================================================== poison


def _as(kind: Any = "outbound-sms", mid: Any = "p-as-1", ts: Any = None, tenant: Any = "poison", *,
        drop: tuple[str, ...] = (), data: Any = "default", **top: Any) -> dict:
    rec: dict[str, Any] = {"version": "1.0", "timestamp": ts, "tenantId": tenant, "workflowContext": {},
                           "customContext": {}, "kind": kind,
                           "data": {"messageId": mid, "recipient": "+61400000000", "body": "hi"}
                           if data == "default" else data, "pii": ["recipient", "body"]}
    rec.update(top)
    for k in drop:
        rec.pop(k, None)
    return rec


def _ac(event_type: Any = "send_sms", mid: Any = "p-ac-1", ts: Any = None, account: Any = 777, *,
        drop: tuple[str, ...] = (), event_data: Any = "default", **top: Any) -> dict:
    rec: dict[str, Any] = {"event_type": event_type, "event_date": ts, "account_id": account, "is_test": False,
                           "event_data": {"send_message_id": mid, "campaign_id": 1}
                           if event_data == "default" else event_data,
                           "custom_data": {"email": "x@example.org"}, "_xxh": "a1", "_md5": "b2", "list_id": 1}
    rec.update(top)
    for k in drop:
        rec.pop(k, None)
    return rec


def poison_records(now: datetime) -> list[tuple[str, str, bytes | None, tuple]]:
    """``(label, input role, raw value, expected)``; expected is ``("dead", reason)``,
    ``("applied",)``, ``("duplicate",)``, ``("ignored", reason)``, ``("non_lifecycle", kind)``,
    or ``("blank", "invalid_json")`` for records a JSON Lines file cannot hold (empty / null
    value / whitespace): the worker dead-letters them, replay skips blank lines."""
    t = iso(now)
    base = now.replace(microsecond=0)
    out: list[tuple[str, str, bytes | None, tuple]] = []

    def add(label: str, role: str, raw: bytes | None, *exp: str) -> None:
        out.append((label, role, raw, tuple(exp)))

    def obj(label: str, rec: dict, *exp: str) -> None:
        add(label, "altcraft" if "event_type" in rec else "activity_sync", dumps(rec), *exp)

    # valid traffic (the funnel must still be exact around the poison)
    obj("valid as sms queued", _as("outbound-sms", "p-v1", t), "applied")
    obj("valid as sent", _as("message-sent", "p-v1", iso(now + timedelta(seconds=1)), data={"messageId": "p-v1"}),
        "applied")
    obj("valid as email", _as("outbound-email", "p-v2", t), "applied")
    obj("valid ac send", _ac("send", "p-v3", t), "applied")
    obj("valid ac deliv", _ac("deliv", "p-v3", iso(now + timedelta(seconds=2))), "applied")
    obj("valid ac send_message_id int", _ac("send_push", 123456, t), "applied")
    obj("valid ac account as digits", _ac("send_sms", "p-v4", t, account="000778"), "applied")
    obj("valid ac negative account", _ac("send_sms", "p-v4b", t, account=-5), "applied")
    obj("valid ac duplicate", _ac("deliv", "p-v3", iso(now + timedelta(seconds=2))), "duplicate")
    obj("valid as version missing", _as("message-failed", "p-v5", t, drop=("version",),
                                        data={"messageId": "p-v5"}), "applied")
    # --- bytes that are not JSON
    for role in ("activity_sync", "altcraft"):
        add(f"invalid utf-8 in a string ({role})", role,
            b'{"kind":"outbound-sms","tenantId":"t\xff\xfe","timestamp":"' + t.encode() + b'"}', "dead", "invalid_json")
        add(f"bare invalid utf-8 ({role})", role, b"\xc3\x28\xa0\xa1\xff", "dead", "invalid_json")
        add(f"overlong utf-8 ({role})", role, b'{"event_type":"send","x":"\xc0\xaf"}', "dead", "invalid_json")
        add(f"lone surrogate escape ({role})", role,
            b'{"kind":"outbound-sms","tenantId":"t\\ud800","timestamp":"' + t.encode() + b'"}', "dead", "invalid_json")
        add(f"truncated ({role})", role, b'{"kind": "outbound-sms", "tenantId": "foo", ', "dead", "invalid_json")
        add(f"NaN ({role})", role, b'{"event_type":"send","x":NaN}', "dead", "invalid_json")
        add(f"trailing garbage ({role})", role, b'{"a":1} x', "dead", "invalid_json")
        add(f"BOM ({role})", role, b"\xef\xbb\xbf" + dumps(_as("outbound-sms", "p-bom", t)), "dead", "invalid_json")
        add(f"empty value ({role})", role, b"", "blank", "invalid_json")
        add(f"null value / tombstone ({role})", role, None, "blank", "invalid_json")
        add(f"whitespace only ({role})", role, b"   \t ", "blank", "invalid_json")
    # --- JSON that is not an object
    for raw in (b"42", b"-1.5e300", b'"a string"', b"null", b"true", b"false", b"[]", b"[1,2,3]",
                b"[" + dumps(_as("outbound-sms", "p-arr", t)) + b"]"):
        add(f"not an object {raw[:20]!r}", "activity_sync", raw, "dead", "not_an_object")
    # --- size (max_event_bytes = 64 KiB): exactly at the limit is fine, one byte over is not
    def padded(size: int, mid: str) -> bytes:
        rec = _as("outbound-email", mid, t)
        rec["customContext"] = {"pad": ""}
        raw = dumps(rec)
        rec["customContext"]["pad"] = "x" * (size - len(raw))
        raw = dumps(rec)
        assert len(raw) == size
        return raw

    add("exactly max_event_bytes", "activity_sync", padded(MAX_EVENT_BYTES, "p-size-ok"), "applied")
    add("max_event_bytes + 1", "activity_sync", padded(MAX_EVENT_BYTES + 1, "p-size-big"), "dead", "too_large")
    add("70 kB valid event", "altcraft", dumps(_ac("send", "p-70k", t, custom_data={"blob": "y" * 70_000})),
        "dead", "too_large")
    add("70 kB garbage", "activity_sync", b"\xff" * 70_000, "dead", "too_large")
    add("multi-byte chars over the limit in bytes", "activity_sync",
        dumps(_as("outbound-sms", "p-mb", t, customContext={"s": "\u00e9" * 33_000})).replace(
            b"\\u00e9", "\u00e9".encode()), "dead", "too_large")
    # --- nesting
    deep = "[" * 5000 + "]" * 5000
    add("5000 nested arrays", "activity_sync", deep.encode(), "dead", "invalid_json")
    add("5000 nested objects", "altcraft", ('{"a":' * 5000 + "1" + "}" * 5000).encode(), "dead", "invalid_json")
    rec = dumps(_as("outbound-sms", "p-deep", t))
    add("valid event with 5000 nested levels inside", "activity_sync",
        rec[:-1] + b',"customContext2":' + ('{"a":' * 5000 + "1" + "}" * 5000).encode() + b"}", "dead", "invalid_json")
    add("valid event with 500 nested levels inside", "activity_sync",
        rec[:-1] + b',"customContext2":' + ('{"a":' * 500 + "1" + "}" * 500).encode() + b"}", "applied")
    # --- unknown source
    obj("empty object", {}, "dead", "unknown_source")
    obj("kind without tenantId", {"kind": "outbound-sms", "timestamp": t}, "dead", "unknown_source")
    obj("tenantId without kind", {"tenantId": "x", "timestamp": t}, "dead", "unknown_source")
    # --- activity_sync: version, kind, fields, message id (SPEC §7 order)
    obj("as version 2.0", _as("outbound-sms", "p-x", t, version="2.0"), "dead", "unsupported_version")
    obj("as version number", _as("outbound-sms", "p-x", t, version=1.0), "dead", "unsupported_version")
    obj("as version before kind", _as("bogus-kind", "p-x", "garbage", version="0.0"), "dead", "unsupported_version")
    obj("as deprecated queued", _as("queued", "p-x", t), "dead", "deprecated_kind")
    obj("as deprecated sent-to-gateway", _as("sent-to-gateway", "p-x", t), "dead", "deprecated_kind")
    obj("as unknown kind", _as("outbound-fax", "p-x", t), "dead", "unknown_kind")
    for bad in (5, None, ["outbound-sms"], {"k": 1}, ""):
        obj(f"as kind {bad!r}", _as(bad, "p-x", t), "dead", "unknown_kind")
    obj("as kind before fields", _as("outbound-fax", "", "garbage", tenant=5), "dead", "unknown_kind")
    for bad in (1724763600, None, "not a date", "2024-08-27 13:00:00", "2024-08-27T13:00:00",
                "2024-02-30T00:00:00Z", "10000-01-01T00:00:00Z", "0001-01-01T00:00:00Z",
                "2024-08-27T13:00:00.1234567891Z", ["2024-08-27T13:00:00Z"], True):
        obj(f"as timestamp {bad!r}", _as("outbound-sms", "p-x", bad), "dead", "schema")
    obj("as timestamp missing", _as("outbound-sms", "p-x", t, drop=("timestamp",)), "dead", "schema")
    for bad in (5, "", None, ["t"], {"t": 1}, True):
        obj(f"as tenantId {bad!r}", _as("outbound-sms", "p-x", t, tenant=bad), "dead", "schema")
    obj("as fields before message id", _as("outbound-sms", "", t, tenant=""), "dead", "schema")
    for bad in ("str", [], 5, True):
        obj(f"as data {bad!r}", _as("message-sent", "p-x", t, data=bad), "dead", "schema")
    obj("as data missing", _as("message-sent", "p-x", t, drop=("data",)), "dead", "missing_message_id")
    obj("as data null", _as("message-sent", "p-x", t, data=None), "dead", "missing_message_id")
    for bad in (5, {}, [], True, 1.5):
        obj(f"as messageId {bad!r}", _as("message-sent", bad, t), "dead", "schema")
    for bad in (None, "", "   "):
        obj(f"as messageId {bad!r}", _as("message-sent", bad, t), "dead", "missing_message_id")
    obj("as messageId missing", _as("message-sent", "p-x", t, data={"detail": "x"}), "dead", "missing_message_id")
    # non-lifecycle kinds need only the envelope
    obj("as experience-start, no data", _as("experience-start", "p-x", t, drop=("data",)),
        "non_lifecycle", "experience-start")
    obj("as action", _as("action", None, t), "non_lifecycle", "action")
    obj("as inbound-sms-matched", _as("inbound-sms-matched", "p-x", t), "non_lifecycle", "inbound-sms-matched")
    obj("as action with bad tenant", _as("action", "p-x", t, tenant=7), "dead", "schema")
    # --- timestamps at the edges
    obj("as far future 2999", _as("outbound-sms", "p-ts-2999", "2999-01-01T00:00:00Z"), "applied")
    obj("as far future 9999-12-29", _as("outbound-email", "p-ts-9999", "9999-12-29T23:59:59.999999Z"), "applied")
    obj("as 9999-12-31 (past the one-day margin the parser keeps)",
        _as("outbound-email", "p-ts-99991231", "9999-12-31T23:59:59Z"), "dead", "schema")
    obj("as pre-1970 (moon landing)", _as("outbound-sms", "p-ts-1969", "1969-07-20T20:17:40Z"), "applied")
    obj("as pre-1970 1900 with offset", _as("outbound-email", "p-ts-1900", "1900-01-01T00:00:00.5+05:30"), "applied")
    obj("as year 1 (day 2)", _as("outbound-sms", "p-ts-0001", "0001-01-02T00:00:00Z"), "applied")
    ns = base.strftime("%Y-%m-%dT%H:%M:%S")
    obj("as nanoseconds", _as("outbound-sms", "p-ns", ns + ".123456789Z"), "applied")
    obj("as nanoseconds, same microsecond = duplicate", _as("outbound-sms", "p-ns", ns + ".123456999Z"),
        "duplicate")
    obj("as microseconds, same instant = duplicate", _as("outbound-sms", "p-ns", ns + ".123456Z"), "duplicate")
    obj("as same instant with an offset = duplicate",
        _as("outbound-sms", "p-ns", (base + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S") + ".123456+02:00"),
        "duplicate")
    obj("as nanoseconds, next microsecond", _as("message-sent", "p-ns", ns + ".123457001Z",
                                                data={"messageId": "p-ns"}), "applied")
    # --- altcraft: event_type, fields, is_test, message id
    for bad in ("unknown_thing", 5, None, "", ["send"], {"a": 1}):
        obj(f"ac event_type {bad!r}", _ac(bad, "p-x", t), "dead", "unknown_kind")
    obj("ac event_type before fields", _ac("nope", "p-x", "garbage", account="abc"), "dead", "unknown_kind")
    for bad in (5, None, "yesterday", "2024-08-27", ""):
        obj(f"ac event_date {bad!r}", _ac("send", "p-x", bad), "dead", "schema")
    obj("ac event_date missing", _ac("send", "p-x", t, drop=("event_date",)), "dead", "schema")
    for bad in ("abc", 1.5, True, None, "", "12a", "\u0661\u0662", [1], {"id": 1}, 10 ** 30):
        obj(f"ac account_id {bad!r}", _ac("send", "p-x", t, account=bad), "dead", "schema")
    obj("ac account_id missing", _ac("send", "p-x", t, drop=("account_id",)), "dead", "schema")
    for bad in ("false", 1, "true"):
        obj(f"ac is_test {bad!r}", _ac("send", "p-x", t, is_test=bad), "dead", "schema")
    for bad in ("x", [], 5):
        obj(f"ac event_data {bad!r}", _ac("deliv", "p-x", t, event_data=bad), "dead", "schema")
    for bad in ({}, [], 1.5, True, 10 ** 30):
        obj(f"ac send_message_id {bad!r}", _ac("deliv", bad, t), "dead", "schema")
    for bad in (None, "", "  "):
        obj(f"ac send_message_id {bad!r}", _ac("deliv", bad, t), "dead", "missing_message_id")
    obj("ac event_data null", _ac("deliv", "p-x", t, event_data=None), "dead", "missing_message_id")
    obj("ac event_data missing", _ac("deliv", "p-x", t, drop=("event_data",)), "dead", "missing_message_id")
    obj("ac test event with empty message id", _ac("deliv", "", t, is_test=True), "ignored", "test_event")
    obj("ac test event, non-lifecycle", _ac("confirm", "p-x", t, is_test=True), "ignored", "test_event")
    obj("ac test event with bad account", _ac("deliv", "p-x", t, account="x", is_test=True), "dead", "schema")
    obj("ac unknown type even when a test", _ac("nope", "p-x", t, is_test=True), "dead", "unknown_kind")
    obj("ac promocode_x", _ac("promocode_whatever", None, t, event_data=None), "non_lifecycle", "promocode_whatever")
    obj("ac confirm", _ac("confirm", None, t), "non_lifecycle", "confirm")
    obj("ac camp_error", _ac("camp_error", "", t, event_data={"campaign_id": 9, "error_code": 500,
                                                               "error_text": "LOG_INTERNAL_ERROR"}),
        "non_lifecycle", "camp_error")
    obj("ac camp_error, bad event_data", _ac("camp_error", "", t, event_data="oops"), "dead", "schema")
    obj("ac far-future date", _ac("send", "p-ac-2999", "2999-12-31T23:59:59.999Z"), "applied")
    obj("ac pre-1970 date", _ac("send_push", "p-ac-1950", "1950-06-01T12:00:00+00:00"), "applied")
    return out


def _kind_label(raw: bytes | None) -> tuple[str, Any] | None:
    """(source, kind value) of a record whose source the normalizer can tell, else None."""
    import orjson

    try:
        obj = orjson.loads(raw or b"")  # as the worker parses (the stdlib recurses on deep nesting)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    if "event_type" in obj:
        return ("altcraft", obj["event_type"])
    if "kind" in obj and "tenantId" in obj:
        return ("activity_sync", obj["kind"])
    return None


def _is_non_lifecycle_label(source: str, kind: Any) -> bool:
    if not isinstance(kind, str):
        return False
    if source == "activity_sync":
        return kind in AS_NON_LIFECYCLE
    return altcraft_non_lifecycle(kind)


def test_poison_input_dead_letters_worker_survives_and_counts_balance(rig: Rig) -> None:
    """Every poison record gets its dead letter with the SPEC §7 reason (or is applied /
    ignored / counted non-lifecycle when it is valid), the worker never stops, the lag
    returns to 0, and ``input = applied + duplicates + dead letters + ignored +
    non-lifecycle`` holds exactly, live (metrics, dead-letter topic, table) and in replay."""
    t_start = time.monotonic()
    w = start_worker(rig, "poison", FUNNELWATCH_MAX_EVENT_BYTES=str(MAX_EVENT_BYTES))
    pid = w.pid
    cases = poison_records(datetime.now(timezone.utc))
    for label, _, raw, _ in cases:
        assert raw is None or (b"\n" not in raw and b"\r" not in raw), label
    by_role: dict[str, list[tuple[str, bytes | None, tuple]]] = {r: [] for r in INPUT_PARTITIONS}
    for label, role, raw, exp in cases:
        by_role[role].append((label, raw, exp))
    where: dict[tuple[str, int, int], tuple[str, bytes | None, tuple]] = {}
    for role, items in by_role.items():
        metas = produce_sync(rig.bootstrap, rig.topics[role], [(b"tombstone" if raw is None else None, raw, 0)
                                                                 for _, raw, _ in items])
        for (label, raw, exp), meta in zip(items, metas):
            where[(rig.topics[role], meta.partition, meta.offset)] = (label, raw, exp)
    n = len(cases)
    expected = Counter(e[0] for *_, e in cases)
    wait_input_consumed(rig, w)

    # --- replay over the same records (blank ones cannot be lines of a file: skipped there)
    lines = [raw for _, _, raw, exp in cases if exp[0] != "blank"]
    report = replay_with_limit(rig, lines, MAX_EVENT_BYTES)
    inp = report["input"]
    exp_rejected = Counter(e[1] for *_, e in cases if e[0] == "dead")
    exp_ignored = Counter(e[1] for *_, e in cases if e[0] == "ignored")
    exp_nonlc = Counter(e[1] for *_, e in cases if e[0] == "non_lifecycle")
    assert inp["lines"] == len(lines)
    assert inp["applied"] == expected["applied"], inp
    assert inp["duplicates"] == expected["duplicate"], inp
    assert inp["rejected"] == dict(exp_rejected), inp
    assert inp["ignored"] == dict(exp_ignored), inp
    assert inp["non_lifecycle"] == dict(exp_nonlc), inp
    assert inp["lines"] == inp["applied"] + inp["duplicates"] + sum(inp["rejected"].values()) + \
        sum(inp["ignored"].values()) + sum(inp["non_lifecycle"].values())

    # --- dead letters: one per rejected record, pointing at it, with the right reason
    n_dead = expected["dead"] + expected["blank"]
    dlq = consume_all_sync(rig.bootstrap, rig.topics["dead_letters"], timeout_s=30, min_records=n_dead, idle_s=2)
    assert len(dlq) == n_dead, f"{len(dlq)} dead letters for {n_dead} rejected records"
    seen: set[tuple[str, int, int]] = set()
    for rec in dlq:
        h = {k: v.decode() for k, v in rec.headers}
        assert set(DLQ_HEADERS) <= set(h), h
        src = (h["dlq.source.topic"], int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))
        assert src in where and src not in seen, (src, h)
        seen.add(src)
        label, raw, exp = where[src]
        assert exp[0] in ("dead", "blank"), f"{label!r} was dead-lettered ({h['dlq.reason']}) but is {exp}"
        assert h["dlq.reason"] == exp[1], f"{label!r}: reason {h['dlq.reason']!r}, expected {exp[1]!r}"
        assert (rec.value or b"") == (raw or b""), f"{label!r}: dead-letter value is not the original bytes"
        assert 0 < len(h["dlq.error"]) <= 300, (label, h["dlq.error"])

    # --- metrics: every input record counted once, in one bucket
    m = metrics_of(w)
    live_input = int(msum(m, "funnel_events_total") + msum(m, "funnel_events_rejected_total", source="unknown"))
    live_dead = int(msum(m, "funnel_events_rejected_total"))
    live_ignored = int(msum(m, "funnel_events_ignored_total"))
    live_dups = int(msum(m, "funnel_duplicates_total"))
    # non-lifecycle: funnel_events_total under non-lifecycle kind labels, less the records under
    # such labels that were rejected or ignored (they count in their own bucket)
    other_bucket_nonlc_labels = sum(
        1 for _, _, raw, e in cases
        if e[0] in ("dead", "ignored") and (kl := _kind_label(raw)) and _is_non_lifecycle_label(*kl))
    nonlc_label_total = sum(v for name, lab, v in m if name == "funnel_events_total"
                            and _is_non_lifecycle_label(lab.get("source", ""), lab.get("kind")))
    live_nonlc = int(nonlc_label_total) - other_bucket_nonlc_labels
    # applied: the events the table holds, per message (GET /messages of every message of the input)
    idents: set[tuple[str, str, str]] = set()
    for _, _, raw, e in cases:
        if e[0] in ("applied", "duplicate"):
            o = json.loads(raw)
            if "event_type" in o:
                acc = o["account_id"]
                tenant = str(acc) if isinstance(acc, int) else (acc.lstrip("0") or "0")
                idents.add(("altcraft", tenant, str(o["event_data"]["send_message_id"])))
            else:
                idents.add(("activity_sync", o["tenantId"], o["data"]["messageId"]))
    live_applied = 0
    for source, tenant, mid in sorted(idents):
        st, body = w.get_json("/messages?" + urllib.parse.urlencode({"source": source, "tenant": tenant, "id": mid}))
        assert st == 200, (source, tenant, mid, st, body)
        live_applied += len(body["events"])
    assert live_input == n, (live_input, n)
    assert live_dead == len(dlq) == n_dead
    live_by_reason = Counter()
    for name, lab, v in m:
        if name == "funnel_events_rejected_total":
            live_by_reason[lab["reason"]] += int(v)
    assert +live_by_reason == exp_rejected + Counter(e[1] for *_, e in cases if e[0] == "blank"), live_by_reason
    assert live_ignored == sum(exp_ignored.values())
    assert live_dups == expected["duplicate"]
    assert live_applied == expected["applied"] == inp["applied"]
    assert live_nonlc == sum(exp_nonlc.values())
    assert live_input == live_applied + live_dups + live_dead + live_ignored + live_nonlc
    # the funnel around the poison is exact
    st, body = w.get_json("/funnel")
    assert st == 200 and body["windows"] == report["windows"], (body, report["windows"])
    # the worker never stopped, no agent crashed
    assert w.alive() and w.pid == pid
    st, live = w.get_json("/health/live")
    assert st == 200 and live.get("agent_crashes", 0) == 0, live
    assert "Traceback" not in w.log_text(), w.log_tail(40)
    log(f"poison: {n} records ({n - expected['applied'] - expected['duplicate']} hostile): live input {live_input} = "
        f"applied {live_applied} + duplicates {live_dups} + dead letters {live_dead} + ignored {live_ignored} + "
        f"non-lifecycle {live_nonlc}; dead letters by reason {dict(sorted(live_by_reason.items()))}; replay input "
        f"{json.dumps(inp)} (+{expected['blank']} empty/null/blank records replay cannot hold); "
        f"took {time.monotonic() - t_start:.1f}s")


# ================================================================================= PII

#: SPEC §8 fields known to carry PII, per vendor.
AS_PII = ("recipient", "sender", "body", "plainTextBody", "to", "cc", "bcc", "from", "replyTo", "subject",
          "attachments", "detail", "outcomeReason", "matchedIntentKey", "matchedPart")
AC_PII = ("custom_data", "_xxh", "_md5", "ip", "lat", "lon", "city", "postal_code", "user_agent", "link_url",
          "bounce_message", "content")


class Canaries:
    """Unique values to plant in PII fields; remembers where each one went."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}

    def s(self, where: str) -> str:
        v = f"cnry{secrets.token_hex(6)}"
        self.where[v] = where
        return v

    def num(self, where: str) -> float:
        v = float(f"{secrets.randbelow(80) + 10}.{secrets.randbelow(10 ** 10):010d}7")
        self.where[repr(v)] = where
        return v

    def leaks(self, blob: bytes) -> list[str]:
        return sorted(f"{v} ({w})" for v, w in self.where.items() if v.encode() in blob)


def as_with_pii(c: Canaries, kind: str, tenant: str, mid: str, ts: str, **top: Any) -> dict:
    """An Activity Sync record with a canary in every PII field: the SPEC §8 ones at the top of
    ``data`` and nested below it, and custom fields the record declares in its own ``pii``."""
    w = f"as {kind} {mid}"
    data: dict[str, Any] = {f: c.s(f"{w} data.{f}") for f in AS_PII}
    data.update({
        "messageId": mid,
        "to": [c.s(f"{w} data.to[0]"), c.s(f"{w} data.to[1]")], "cc": [c.s(f"{w} data.cc[0]")],
        "bcc": [c.s(f"{w} data.bcc[0]")],
        "attachments": [{"filename": c.s(f"{w} attachments[0].filename"), "content": c.s(f"{w} attachments content")}],
        "usage": [{"uom": "sms-segments-au", "qty": 1}],
        "nested": {"recipient": c.s(f"{w} data.nested.recipient"),
                   "deeper": {"body": c.s(f"{w} data.nested.deeper.body"),
                              "items": [{"detail": c.s(f"{w} data.nested.deeper.items[0].detail")}]}},
        "customerName": c.s(f"{w} data.customerName (declared in pii)"),
    })
    rec = {"version": "1.0", "timestamp": ts, "tenantId": tenant,
           "workflowContext": {"flowContext": {"flowId": "f-1", "flowName": c.s(f"{w} flowName (declared in pii)"),
                                               "flowVersion": 1}},
           "customContext": {"loyaltyNote": c.s(f"{w} customContext.loyaltyNote (declared in pii)")},
           "kind": kind, "data": data, "pii": [*AS_PII, "customerName", "loyaltyNote", "flowName"]}
    rec.update(top)
    return rec


def ac_with_pii(c: Canaries, et: str, account: Any, mid: str, ts: str, **top: Any) -> dict:
    """An Altcraft hook with a canary in every SPEC §8 field, at the top, in ``event_data`` and nested."""
    w = f"ac {et} {mid}"
    ed: dict[str, Any] = {"send_message_id": mid, "campaign_id": 973, "message_id": 17, "launch_id": "l-1",
                          "ip": c.s(f"{w} ip"), "lat": c.num(f"{w} lat"), "lon": c.num(f"{w} lon"),
                          "city": c.s(f"{w} city"), "postal_code": c.s(f"{w} postal_code"),
                          "user_agent": c.s(f"{w} user_agent"),
                          "link_url": "https://example.org/" + c.s(f"{w} link_url"),
                          "bounce_message": c.s(f"{w} bounce_message"), "content": c.s(f"{w} content"),
                          "geo": {"city": c.s(f"{w} geo.city"), "lat": c.num(f"{w} geo.lat"),
                                  "postal_code": c.s(f"{w} geo.postal_code")},
                          "clicks": [{"link_url": c.s(f"{w} clicks[0].link_url"), "ip": c.s(f"{w} clicks[0].ip")}]}
    if et == "camp_error":
        ed.update({"campaign_id": 9, "error_code": 500, "error_text": "LOG_INTERNAL_ERROR", "send_message_id": ""})
    rec = {"event_type": et, "event_date": ts, "account_id": account, "is_test": False, "event_data": ed,
           "custom_data": {"email": c.s(f"{w} custom_data.email"), "phone": c.s(f"{w} custom_data.phone"),
                           "profile": {"name": c.s(f"{w} custom_data.profile.name")}},
           "_xxh": c.s(f"{w} _xxh"), "_md5": c.s(f"{w} _md5"), "list_id": 1,
           "ip": c.s(f"{w} top-level ip"), "user_agent": c.s(f"{w} top-level user_agent")}
    rec.update(top)
    return rec


def _all_records_blob(bootstrap: str, topic: str) -> tuple[int, bytes]:
    recs = consume_all_sync(bootstrap, topic, timeout_s=20, idle_s=1.0)
    parts = []
    for r in recs:
        parts += [r.key or b"", r.value or b""]
        for k, v in r.headers or ():
            parts += [k.encode(), v or b""]
    return len(recs), b"\x00".join(parts)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_pii_canaries_never_leave_the_worker(rig: Rig, log_format: str) -> None:
    """Canaries in every PII field of every kind of both vendors (SPEC §8 fields at any depth,
    plus fields the record declares in ``pii``), in applied, duplicate, non-lifecycle,
    ignored and rejected records, with short SLAs so stuck, resolved and campaign alerts are
    raised: no canary in the changelog / repartition / internal topics, ``funnel-windows``,
    ``message-alerts``, the worker log (DEBUG), ``/metrics``, any web view, or a ``dlq.error``
    header; the dead-letter values (the audit copy) do hold them (positive control)."""
    t_start = time.monotonic()
    w = start_worker(rig, f"pii-{log_format}", FUNNELWATCH_MAX_EVENT_BYTES=str(MAX_EVENT_BYTES),
                     FUNNELWATCH_LOG_LEVEL="DEBUG", FUNNELWATCH_PUBLISH_INTERVAL_S="1",
                     FUNNELWATCH_LOG_FORMAT=log_format)
    c = Canaries()
    now = datetime.now(timezone.utc) - timedelta(seconds=30)
    ts = lambda s: iso(now + timedelta(seconds=s))  # noqa: E731
    recs: list[dict | bytes] = []
    # activity sync: every lifecycle kind, non-lifecycle kinds, rejected ones
    for kind, s in (("outbound-sms", 0), ("message-sent", 1), ("message-delivered", 2), ("message-link-clicked", 3),
                    ("message-opened", 4)):
        recs.append(as_with_pii(c, kind, "pii-tenant", "pii-sms-1", ts(s)))
    recs.append(as_with_pii(c, "message-link-clicked", "pii-tenant", "pii-sms-1", ts(3)))  # duplicate
    for kind, s in (("outbound-email", 0), ("message-sent", 1), ("message-failed", 2)):
        recs.append(as_with_pii(c, kind, "pii-tenant", "pii-email-1", ts(s)))
    recs.append(as_with_pii(c, "outbound-sms", "pii-tenant", "pii-stuck-q", ts(0)))
    recs.append(as_with_pii(c, "outbound-email", "pii-tenant", "pii-stuck-s", ts(0)))
    recs.append(as_with_pii(c, "message-sent", "pii-tenant", "pii-stuck-s", ts(1)))
    recs.append(as_with_pii(c, "message-delivered", "pii-tenant", "pii-unknown-ch", ts(1)))
    for kind in sorted(AS_NON_LIFECYCLE):
        recs.append(as_with_pii(c, kind, "pii-tenant", f"pii-nl-{kind}", ts(1)))
    recs.append(as_with_pii(c, "queued", "pii-tenant", "pii-rej-1", ts(1)))  # deprecated_kind
    recs.append(as_with_pii(c, "outbound-fax", "pii-tenant", "pii-rej-2", ts(1)))  # unknown_kind
    recs.append(as_with_pii(c, "outbound-sms", "pii-tenant", "pii-rej-3", "garbage"))  # schema
    recs.append(as_with_pii(c, "outbound-sms", "pii-tenant", "pii-rej-4", ts(1), version="0.9"))
    recs.append(as_with_pii(c, "message-sent", "pii-tenant", "", ts(1)))  # missing_message_id
    # altcraft: every lifecycle event type (one message each), non-lifecycle, test, rejected
    for i, et in enumerate(sorted(AC_LIFECYCLE)):
        recs.append(ac_with_pii(c, et, 4242, f"pii-ac-{et}", ts(i % 5)))
    recs.append(ac_with_pii(c, "send", 4242, "pii-ac-flow", ts(0)))
    recs.append(ac_with_pii(c, "deliv", 4242, "pii-ac-flow", ts(1)))
    recs.append(ac_with_pii(c, "click", 4242, "pii-ac-flow", ts(2)))
    for et in ("confirm", "camp_error", "promocode_attach", "segs_add", "profile_merge"):
        recs.append(ac_with_pii(c, et, 4242, f"pii-ac-nl-{et}", ts(1)))
    recs.append(ac_with_pii(c, "deliv", 4242, "pii-ac-test", ts(1), is_test=True))
    recs.append(ac_with_pii(c, "no_such_type", 4242, "pii-ac-rej-1", ts(1)))
    recs.append(ac_with_pii(c, "send", "not-a-number", "pii-ac-rej-2", ts(1)))
    recs.append(ac_with_pii(c, "send", 4242, "", ts(1)))
    # rejected before/without parsing: invalid JSON, not an object, too large
    recs.append(dumps(ac_with_pii(c, "send", 4242, "pii-trunc", ts(1)))[:-25])
    recs.append(b"[" + dumps(as_with_pii(c, "outbound-sms", "pii-tenant", "pii-array", ts(1))) + b"]")
    big = as_with_pii(c, "outbound-sms", "pii-tenant", "pii-big", ts(1))
    big["customContext"]["blob"] = c.s("too_large blob head") + "z" * 70_000
    recs.append(big)
    raws = [r if isinstance(r, bytes) else dumps(r) for r in recs]
    by_role: dict[str, list] = {"activity_sync": [], "altcraft": []}
    for raw in raws:
        by_role["altcraft" if b'"event_type"' in raw else "activity_sync"].append((None, raw, None))
    for role, items in by_role.items():
        produce_sync(rig.bootstrap, rig.topics[role], items)
    wait_input_consumed(rig, w)
    # stuck alerts (SLA 5 s / 10 s), then advance two of them: resolved alerts
    def alert_types() -> Counter:
        n, blob = _all_records_blob(rig.bootstrap, rig.topics["alerts"])
        return Counter(json.loads(v)["type"] for v in blob.split(b"\x00") if v.startswith(b"{"))

    wait_until(lambda: alert_types()["stuck"] >= 2, 40, 1.0, "stuck alerts")
    produce_sync(rig.bootstrap, rig.topics["activity_sync"], [
        (None, dumps(as_with_pii(c, "message-sent", "pii-tenant", "pii-stuck-q", ts(20))), None),
        (None, dumps(as_with_pii(c, "message-delivered", "pii-tenant", "pii-stuck-s", ts(21))), None)])
    produce_sync(rig.bootstrap, rig.topics["altcraft"], [
        (None, dumps(ac_with_pii(c, "deliv", 4242, "pii-ac-send", ts(22))), None)])
    wait_input_consumed(rig, w)
    types = wait_until(lambda: (t := alert_types())["resolved"] >= 3 and t, 30, 1.0, "resolved alerts")
    time.sleep(2.5)  # a funnel-windows publish after the last change
    assert len(c.where) > 1500, len(c.where)

    found: dict[str, list[str]] = {}

    def check(where: str, blob: bytes) -> None:
        leaks = c.leaks(blob)
        if leaks:
            ctx = []
            for leak in leaks[:2]:
                i = blob.find(leak.split(" ", 1)[0].encode())
                ctx.append(blob[max(0, i - 300):i + 100].decode(errors="replace"))
            found[where] = leaks[:5] + ([f"... {len(leaks)} in all"] if len(leaks) > 5 else []) + ctx

    scanned: dict[str, int] = {}
    internal = app_topics(rig.bootstrap, rig.app_id)
    assert any(t.endswith("-lifecycle-events") for t in internal) and any(t.endswith("-changelog") for t in internal)
    for topic in internal:
        n, blob = _all_records_blob(rig.bootstrap, topic)
        scanned[topic] = n
        check(f"topic {topic}", blob)
    for role in ("alerts", "funnel_windows"):
        n, blob = _all_records_blob(rig.bootstrap, rig.topics[role])
        scanned[role] = n
        assert n, f"nothing on the {role} topic to scan"
        check(f"topic {role}", blob)
    dlq = consume_all_sync(rig.bootstrap, rig.topics["dead_letters"], timeout_s=20, idle_s=1.0)
    scanned["dead_letters"] = len(dlq)
    check("dlq.error headers", b"\n".join(dict(r.headers).get("dlq.error", b"") for r in dlq))
    check("dlq headers (all but the value)", b"\n".join(k.encode() + b"=" + (v or b"") for r in dlq
                                                         for k, v in r.headers))
    assert len(c.leaks(b"\n".join(r.value or b"" for r in dlq))) > 100, "positive control: audit copies hold canaries"
    views = ["/", "/funnel", "/funnel?local=1", "/alerts", "/alerts?local=1", "/alerts?limit=1000", "/metrics",
             "/stats", "/stats?local=1", "/health/live", "/health/ready", "/funnel?by=campaign",
             "/funnel?by=campaign&local=1", "/latency", "/latency?local=1"]
    mids = {("activity_sync", "pii-tenant", m) for m in ("pii-sms-1", "pii-email-1", "pii-stuck-q", "pii-stuck-s",
                                                          "pii-unknown-ch")}
    mids |= {("altcraft", "4242", f"pii-ac-{et}") for et in AC_LIFECYCLE} | {("altcraft", "4242", "pii-ac-flow")}
    for source, tenant, mid in sorted(mids):
        views.append(f"/messages/{source}/{tenant}/{urllib.parse.quote(mid)}")
        views.append("/messages?" + urllib.parse.urlencode({"source": source, "tenant": tenant, "id": mid}))
    for path in views:
        st, body = w.get(path, timeout_s=10)
        assert st in (200, 503) if path == "/health/ready" else st == 200, (path, st, body[:300])
        check(f"GET {path}", body)
    log_bytes = w.log_bytes()
    check("worker log (DEBUG)", log_bytes)
    if log_format == "json":  # one object per line, every line
        lines = [ln for ln in log_bytes.splitlines() if ln.strip()]
        objs = [json.loads(ln) for ln in lines]
        assert all({"timestamp", "level", "logger", "message"} <= o.keys() for o in objs), objs[:3]
        assert any(o["logger"].startswith("funnelwatch") for o in objs)
    assert not found, f"PII canaries found outside the dead-letter values: {json.dumps(found, indent=1)}"
    assert w.alive()
    log(f"PII: {len(c.where)} canaries in {len(raws) + 3} records; scanned {scanned} records, {len(views)} views, "
        f"{len(log_bytes) / 1e6:.1f} MB of DEBUG log; alerts {dict(types)}; zero leaks; "
        f"took {time.monotonic() - t_start:.1f}s")


# ========================================================================== cardinality


def test_tenant_cardinality_flood_is_capped(rig: Rig) -> None:
    """10,000 distinct tenants (5,000 per vendor, one message each, all of them going stuck):
    ``/metrics`` shows at most ``max_tenants_label`` (50) tenant values + ``other``, and
    ``funnel_label_overflow_total`` counts every observation reported as ``other``."""
    t_start = time.monotonic()
    w = start_worker(rig, "flood")
    now = datetime.now(timezone.utc) - timedelta(seconds=20)
    n_each = 5000
    t = iso(now)
    as_recs = [(None, dumps(_as("outbound-email", f"m{i}", t, tenant=f"flood-{i:05d}")), None) for i in range(n_each)]
    ac_recs = [(None, dumps(_ac("send", f"m{i}", t, account=100_000 + i)), None) for i in range(n_each)]
    produce_sync(rig.bootstrap, rig.topics["activity_sync"], as_recs)
    produce_sync(rig.bootstrap, rig.topics["altcraft"], ac_recs)
    wait_input_consumed(rig, w, 90)
    total = 2 * n_each
    cap = 50

    def stuck_all() -> bool:
        return msum(metrics_of(w), "funnel_alerts_total", type="stuck") >= total

    wait_until(stuck_all, 60, 1.0, f"{total} stuck alerts")
    st, raw = w.get("/metrics", timeout_s=10)
    assert st == 200
    m = metrics_of(w)
    tenants = {lab["tenant"] for _, lab, _ in m if "tenant" in lab}
    per_family: dict[str, set[str]] = {}
    for name, lab, _ in m:
        if "tenant" in lab:
            per_family.setdefault(name, set()).add(lab["tenant"])
    overflow = {lab.get("metric"): int(v) for name, lab, v in m if name == "funnel_label_overflow_total"}
    assert len(tenants) <= cap + 1 and "other" in tenants, (len(tenants), sorted(tenants)[:60])
    assert all(len(v) <= cap + 1 for v in per_family.values()), {k: len(v) for k, v in per_family.items()}
    assert overflow.get("funnel_stage_reached_total") == total - cap, overflow
    assert overflow.get("funnel_stuck_messages") == total - cap, overflow
    # the capped series still add up: every message is in the funnel and stuck exactly once
    assert msum(m, "funnel_stuck_messages") == total
    st, body = w.get_json("/funnel", timeout_s=30)
    assert st == 200 and sum(r["entered"] for r in body["windows"]) == total
    assert len({r["tenant"] for r in body["windows"]}) == total  # the funnel view keeps real tenants
    log(f"cardinality: {total} tenants -> {len(tenants)} tenant label values on /metrics "
        f"({len(raw) / 1e3:.0f} kB), overflow {overflow}; took {time.monotonic() - t_start:.1f}s")


# ========================================================================= web exposure


def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp{,6}) of sockets listening on ``port``."""
    out = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            addr, _, p = f[1].rpartition(":")
            if int(p, 16) == port and f[3] == "0A":  # LISTEN
                out.append(addr)
    return out


def _other_local_addresses() -> list[str]:
    """IPv4 addresses of this machine other than loopback."""
    addrs: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addrs.add(info[4][0])
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            addrs.add(s.getsockname()[0])
    except OSError:
        pass
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
        addrs.update(a for a in out.split() if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", a))
    except (OSError, subprocess.SubprocessError):
        pass
    return sorted(a for a in addrs if not a.startswith("127.") and a != "0.0.0.0")


def test_web_binds_loopback_by_default_and_token_guards_every_view(rig: Rig) -> None:
    """Without ``FUNNELWATCH_WEB_HOST`` the web server listens on 127.0.0.1 only (not on the
    machine's other addresses); with ``FUNNELWATCH_WEB_TOKEN`` set, every non-health view
    answers 401 without the token (or with a wrong one) and the health views stay open."""
    token = "tok-" + secrets.token_hex(12)
    env = rig.env(rig.tmp / "web", FUNNELWATCH_STORE="memory://", FUNNELWATCH_WEB_TOKEN=token)
    del env["FUNNELWATCH_WEB_HOST"]  # the default is what is tested
    w = rig.pool.start("web", env)

    def ready() -> bool:  # Worker.wait_ready asks /funnel, which wants the token now
        w.check_alive()
        return "Worker ready" in w.log_text() and http_get(w.base_url + "/health/ready", 3)[0] == 200

    wait_until(ready, 60, 0.3, "worker ready (health view)")
    port = w.port
    listening = _listeners(port)
    assert listening and set(listening) == {"0100007F"}, f"port {port} listens on {listening} (hex), not 127.0.0.1"
    others = _other_local_addresses()
    reached = []
    for addr in others:
        try:
            with socket.create_connection((addr, port), timeout=2):
                reached.append(addr)
        except OSError:
            pass
    assert not reached, f"the worker answers on {reached}:{port}"
    if not others:
        log("web: no non-loopback IPv4 address on this machine: the connect sub-check was skipped")
    produce_sync(rig.bootstrap, rig.topics["altcraft"], [(None, dumps(_ac("send", "web-1", iso(datetime.now(
        timezone.utc)), account=31)), None)])
    guarded = ["/", "/funnel", "/funnel?local=1", "/alerts", "/alerts?local=1", "/metrics", "/stats",
               "/funnel?by=campaign", "/funnel?by=campaign&local=1", "/latency", "/latency?local=1",
               "/stats?local=1", "/messages?source=altcraft&tenant=31&id=web-1", "/messages/altcraft/31/web-1",
               "/messages/altcraft/31/nope"]
    denied: dict[str, list[int]] = {}
    for path in guarded:
        statuses = []
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"},
                        {"X-Funnelwatch-Token": token + "x"}, {"Authorization": f"Bearer {token[:-1]}"}):
            st, body = http_get(w.base_url + path, 10, headers)
            statuses.append(st)
            assert token.encode() not in body, (path, body[:200])
        st, _ = http_get(w.base_url + path + ("&" if "?" in path else "?") + "token=wrong", 10)
        statuses.append(st)
        denied[path] = statuses
        assert set(statuses) == {401}, (path, statuses)
        st, _ = http_get(w.base_url + path, 10, {"Authorization": f"Bearer {token}"})
        assert st == (404 if path.endswith("/nope") else 200) or (path.startswith("/messages") and st == 404), \
            (path, st)
    for path in ("/health/live", "/health/ready"):
        st, body = http_get(w.base_url + path, 10)
        assert st == 200, (path, st, body[:200])
    # faust's own views stay off; ingress is off without an ingest token
    for path in ("/router/", "/table/messages/", "/graph/", "/stats/"):
        st, _ = http_get(w.base_url + path, 10, {"Authorization": f"Bearer {token}"})
        assert st in (401, 404), (path, st)
    req = urllib.request.Request(w.base_url + "/ingest/altcraft", data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            st = resp.status
    except urllib.error.HTTPError as exc:
        st = exc.code
    assert st == 404, st
    log(f"web: listening {listening} on port {port}; other addresses tried {others or 'none'}; "
        f"{len(guarded)} views x 6 credential variants -> 401")
