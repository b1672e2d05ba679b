"""The live pipeline end to end on a real broker: `funnelwatch worker` subprocesses fed the
golden scenario (SPEC §9: `/funnel` == the replay report), dead letters (§7) and PII (§8).

One worker (module fixture ``single``) is shared by the single-worker tests; the two-worker
test starts its own pair. Every wait is bounded; workers are stopped SIGTERM → SIGKILL.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.kafka_fixtures import consume_all_sync, create_topics, delete_topics, produce
from tests.worker_harness import (
    BASIC,
    WorkerPool,
    app_topics,
    delete_app_topics,
    expected_report,
    produce_scenario,
    replay_json,
    scenario_lines,
    source_of_line,
    wait_group_lag_zero,
    wait_until,
    worker_env,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

INPUT_PARTITIONS = {"activity_sync": 3, "altcraft": 2}
# The golden scenario is from 2024: keep its windows "recent" so the worker publishes them to
# the funnel-windows topic (rows older than window_retention are not published).
LONG_RETENTION = {"FUNNELWATCH_WINDOW_RETENTION_S": str(20 * 365 * 86400)}
OUTPUT_PARTITIONS = {"dead_letters": 2, "alerts": 1, "funnel_windows": 2}
SEED = 20240827

# SPEC §8 field names known to carry PII (both vendors), matched at any depth.
SPEC_PII_FIELDS = frozenset({
    "recipient", "sender", "body", "plainTextBody", "to", "cc", "bcc", "from", "replyTo", "subject",
    "attachments", "detail", "outcomeReason", "matchedIntentKey", "matchedPart",
    "custom_data", "_xxh", "_md5", "ip", "lat", "lon", "city", "postal_code", "user_agent", "link_url",
    "bounce_message", "content",
})
# SPEC §4 Activity Sync kinds (all accepted ones, lifecycle or not) and v0.0 deprecated kinds.
AS_KINDS = frozenset({
    "outbound-sms", "outbound-email", "message-sent", "message-delivered", "message-opened",
    "message-link-clicked", "message-failed", "inbound-sms-matched", "inbound-sms-unmatched",
    "experience-start", "experience-complete", "experience-failed", "action",
})
DLQ_HEADERS = ("dlq.reason", "dlq.source.topic", "dlq.source.partition", "dlq.source.offset", "dlq.error")


# ------------------------------------------------------------------------------ helpers


def _uid() -> str:
    return secrets.token_hex(4)


def _make_topics(bootstrap: str, suffix: str) -> dict[str, str]:
    parts = {**INPUT_PARTITIONS, **OUTPUT_PARTITIONS}
    topics = {role: f"fw-{role.replace('_', '-')}-{suffix}" for role in parts}
    asyncio.run(create_topics(bootstrap, {topics[r]: n for r, n in parts.items()}))
    return topics


def _cleanup_topics(bootstrap: str, topics: dict[str, str], app_id: str) -> None:
    try:
        asyncio.run(delete_topics(bootstrap, list(topics.values())))
    except Exception:  # noqa: BLE001 - best effort
        pass
    delete_app_topics(bootstrap, app_id)


@contextmanager
def _fresh_app(bootstrap: str, name: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A new app id and its own input/output topics; all of them deleted afterwards."""
    suffix = _uid()
    app_id = f"fwtest-{name}-{suffix}"
    topics = _make_topics(bootstrap, suffix)
    try:
        yield app_id, topics
    finally:
        _cleanup_topics(bootstrap, topics, app_id)


def _expected_windows() -> list[dict[str, Any]]:
    return expected_report()["windows"]


def _windows_equal(expected: list[dict[str, Any]]):
    return lambda body: isinstance(body, dict) and body.get("windows") == expected


def _classify_rejection(line: bytes) -> str | None:
    """The SPEC §7 reason for the malformed lines of basic.jsonl (None = not rejected by
    the checks this scenario exercises)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return "invalid_json"
    if "event_type" in obj:
        return None
    if obj.get("version", "1.0") != "1.0":
        return "unsupported_version"
    if obj.get("kind") not in AS_KINDS:
        return "unknown_kind"
    return None


def _pii_values(lines: list[bytes]) -> set[str]:
    """Every PII value of the scenario: values of SPEC §8 fields and of each record's own
    ``pii`` list, at any depth (leaf values of nested lists/objects), as strings; trivial
    values (shorter than 4 chars once stripped) are left out."""
    out: set[str] = set()

    def leaves(v: Any):
        if isinstance(v, dict):
            for x in v.values():
                yield from leaves(x)
        elif isinstance(v, list):
            for x in v:
                yield from leaves(x)
        elif v is not None and not isinstance(v, bool):
            yield str(v)

    def walk(node: Any, fields: frozenset[str]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in fields:
                    out.update(leaves(v))
                walk(v, fields)
        elif isinstance(node, list):
            for x in node:
                walk(x, fields)

    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        own = obj.get("pii") if isinstance(obj.get("pii"), list) else []
        walk(obj, SPEC_PII_FIELDS | {f for f in own if isinstance(f, str)})
    return {v for v in out if len(v.strip()) >= 4}


def _needles(values: set[str]) -> dict[bytes, str]:
    """Byte patterns to look for: each value raw, stripped and JSON-escaped."""
    out: dict[bytes, str] = {}
    for v in values:
        for form in {v, v.strip(), json.dumps(v)[1:-1], json.dumps(v.strip())[1:-1]}:
            if len(form.strip()) >= 4:
                out[form.encode()] = v
    return out


def _leaks(blob: bytes, needles: dict[bytes, str]) -> list[str]:
    return sorted({v for n, v in needles.items() if n in blob})


def _record_bytes(rec: Any) -> bytes:
    parts = [rec.key or b"", rec.value or b""]
    for name, val in rec.headers or ():
        parts += [name.encode(), val or b""]
    return b"\x00".join(parts)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def single(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):
    """One worker, started before the golden scenario is produced (shuffled, spread)."""
    tmp = tmp_path_factory.mktemp("single")
    with _fresh_app(kafka_bootstrap, "single") as (app_id, topics):
        pool = WorkerPool(tmp)
        try:
            w = pool.start("w1", worker_env(app_id=app_id, bootstrap=kafka_bootstrap, topics=topics,
                                            data_dir=tmp / "w1", extra=LONG_RETENTION))
            t0 = time.monotonic()
            w.wait_ready(45)
            ready_s = time.monotonic() - t0
            produced = produce_scenario(kafka_bootstrap, topics, INPUT_PARTITIONS, BASIC, SEED)
            yield SimpleNamespace(worker=w, topics=topics, app_id=app_id, bootstrap=kafka_bootstrap,
                                  produced=produced, tmp=tmp, ready_s=ready_s)
        finally:
            pool.stop_all()


# --------------------------------------------------------------------------------- tests


def test_scenario_is_spread_across_partitions(single) -> None:
    """Guard for the setup itself: both inputs used, every partition used, and messages with
    several records have them on more than one partition."""
    lines = scenario_lines(BASIC)
    assert len(single.produced) == len(lines) == expected_report()["input"]["lines"]
    by_role = Counter(p.role for p in single.produced)
    assert by_role == Counter(source_of_line(ln) for ln in lines)
    for role, n in INPUT_PARTITIONS.items():
        assert {p.partition for p in single.produced if p.role == role} == set(range(n))
    per_msg: dict[tuple, set[int]] = {}
    for p in single.produced:
        try:
            obj = json.loads(p.value)
        except ValueError:
            continue
        mid = (obj.get("event_data") or {}).get("send_message_id") or (obj.get("data") or {}).get("messageId")
        if mid:
            per_msg.setdefault((p.role, mid), set()).add(p.partition)
    multi = [k for k, parts in per_msg.items() if len(parts) > 1]
    assert len(multi) >= 4, per_msg


def test_single_worker_funnel_equals_golden_and_replay(single) -> None:
    expected = _expected_windows()
    body = single.worker.wait_json("/funnel", _windows_equal(expected), 60,
                                   "single worker /funnel == basic.expected.json windows")
    assert body["windows"] == expected
    replay = replay_json(BASIC)
    assert replay["windows"] == expected
    assert body["windows"] == replay["windows"]


def test_dead_letters_headers_and_lag(single) -> None:
    w = single.worker
    by_pos = {(p.topic, p.partition, p.offset): p for p in single.produced}
    expected_reasons = {p.value: _classify_rejection(p.value) for p in single.produced}
    expected_reasons = {v: r for v, r in expected_reasons.items() if r is not None}
    assert Counter(expected_reasons.values()) == Counter(expected_report()["input"]["rejected"])

    recs = consume_all_sync(single.bootstrap, single.topics["dead_letters"], timeout_s=30,
                            min_records=len(expected_reasons), idle_s=1.5)
    assert len(recs) == len(expected_reasons), [(r.value[:80], r.headers) for r in recs]
    seen = set()
    for rec in recs:
        headers = dict(rec.headers)
        assert set(DLQ_HEADERS) <= set(headers), headers
        src = (headers["dlq.source.topic"].decode(), int(headers["dlq.source.partition"]),
               int(headers["dlq.source.offset"]))
        assert src in by_pos, f"dead letter points to {src}, not a produced record"
        original = by_pos[src]
        assert rec.value == original.value, "dead-letter value must be the original bytes"
        assert headers["dlq.reason"].decode() == expected_reasons[original.value], (src, headers)
        err = headers["dlq.error"].decode()
        assert 0 < len(err) <= 300, err
        seen.add(original.value)
    assert seen == set(expected_reasons)

    # The worker keeps running and serving after the rejections.
    assert w.alive()
    status, _ = w.get("/funnel")
    assert status == 200

    inputs = [single.topics["activity_sync"], single.topics["altcraft"]]
    wait_group_lag_zero(single.bootstrap, single.app_id, inputs, 45,
                        f"consumer group {single.app_id} lag 0 on the input topics")
    assert w.alive()


def _latest_rows(recs: list[Any]) -> dict[bytes, Any]:
    """Last value per key (the topic is a changelog of rows; None = row removed)."""
    latest: dict[bytes, Any] = {}
    for r in sorted(recs, key=lambda r: (r.timestamp, r.partition, r.offset)):
        latest[r.key] = json.loads(r.value) if r.value else None
    return {k: v for k, v in latest.items() if v is not None}


def test_funnel_windows_topic_has_the_golden_rows(single) -> None:
    expected = _expected_windows()
    single.worker.wait_json("/funnel", _windows_equal(expected), 60)
    last: dict = {}

    def complete() -> bool:
        recs = consume_all_sync(single.bootstrap, single.topics["funnel_windows"], timeout_s=5, idle_s=0.5)
        last.clear()
        last.update(_latest_rows(recs))
        rows = sorted(last.values(), key=lambda r: (r["window_start"], r["tenant"], r["channel"]))
        return rows == expected

    try:
        wait_until(complete, 30, 1.0, "funnel-windows topic rows == basic.expected.json windows")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: latest rows {last}") from None
    for key, row in last.items():
        assert key.decode() == f"{row['window_start']}|{row['tenant']}|{row['channel']}"


def test_no_pii_leaves_the_worker(single) -> None:
    w = single.worker
    lines = scenario_lines(BASIC)
    values = _pii_values(lines)
    # The derivation finds the obvious ones (guard against an empty, vacuous check).
    for v in ("+61412345678", "john.smith@appleseed.com", "alice@example.org", "ad1850e0d1d9481e",
              "10.9.0.14", "Moscow", "http://www.example.com", "Thanks for signing up, John.",
              "+61487654321", "I need some help", "Thanks for registering with us.", "welcomepack.pdf",
              "145bb30f7ddf1184cb560bc4b7705646", "company@appleseed.com", "smtp: 225 Queued for delivery"):
        assert v in values, v
    needles = _needles(values)

    # Let the pipeline finish and publish: funnel complete, alerts raised, windows published.
    w.wait_json("/funnel", _windows_equal(_expected_windows()), 60)

    def alerts_topic() -> list[Any] | None:
        recs = consume_all_sync(single.bootstrap, single.topics["alerts"], timeout_s=5, idle_s=0.5)
        types = {json.loads(r.value).get("type") for r in recs if r.value}
        return recs if {"stuck", "campaign_error"} <= types else None

    alert_recs = wait_until(alerts_topic, 45, 1.0, "stuck + campaign_error alerts on the alerts topic")
    stuck = [json.loads(r.value) for r in alert_recs if r.value and json.loads(r.value)["type"] == "stuck"]
    assert {(a["source"], a["tenant"], a["message_id"], a["stage"]) for a in stuck} == {
        (s["source"], s["tenant"], s["message_id"], s["stage"]) for s in expected_report()["stuck"]}

    window_recs = wait_until(
        lambda: consume_all_sync(single.bootstrap, single.topics["funnel_windows"], timeout_s=5, idle_s=0.5),
        30, 1.0, "records on the funnel-windows topic")

    found: dict[str, list[str]] = {}

    def check(where: str, blob: bytes) -> None:
        leaks = _leaks(blob, needles)
        if leaks:
            found[where] = leaks

    internal = app_topics(single.bootstrap, single.app_id)
    assert any(t.endswith("-lifecycle-events") for t in internal), internal
    assert any(t.endswith("-changelog") for t in internal), internal
    for topic in internal:
        recs = consume_all_sync(single.bootstrap, topic, timeout_s=10, idle_s=1.0)
        if topic.endswith(("-lifecycle-events", "-changelog")):
            assert recs, f"{topic} is empty: nothing to check"
        check(f"topic {topic}", b"\n".join(_record_bytes(r) for r in recs))
    check("alerts topic", b"\n".join(_record_bytes(r) for r in alert_recs))
    check("funnel-windows topic", b"\n".join(_record_bytes(r) for r in window_recs))
    dlq = consume_all_sync(single.bootstrap, single.topics["dead_letters"], timeout_s=10, idle_s=1.0)
    check("dead-letter dlq.error headers", b"\n".join(dict(r.headers).get("dlq.error", b"") for r in dlq))
    # Positive control: the search does find PII where it may legitimately be (the audit
    # copies on the dead-letter topic carry the raw unsupported_version record).
    assert "+61412345678" in _leaks(b"\n".join(r.value or b"" for r in dlq), needles)
    for path in ("/metrics", "/funnel", "/alerts"):
        status, body = w.get(path)
        assert status == 200, (path, status, body[:200])
        check(f"GET {path}", body)
    check("worker log", w.log_bytes())
    assert not found, f"PII found outside the worker: {found}"


def test_two_workers_each_serve_full_funnel(kafka_bootstrap: str, tmp_path: Path) -> None:
    expected = _expected_windows()
    with _fresh_app(kafka_bootstrap, "pair") as (app_id, topics):
        with WorkerPool(tmp_path) as pool:
            ws = [pool.start(name, worker_env(app_id=app_id, bootstrap=kafka_bootstrap, topics=topics,
                                              data_dir=tmp_path / name))
                  for name in ("w1", "w2")]
            assert ws[0].port != ws[1].port
            for w in ws:
                w.wait_ready(45)

            # Group stable: both answer /funnel 200 (a scatter-gather that reaches the peer).
            def stable() -> bool:
                return all(w.get("/funnel", 5)[0] == 200 for w in ws)

            wait_until(stable, 45, 0.5, "both workers answer /funnel 200")
            produce_scenario(kafka_bootstrap, topics, INPUT_PARTITIONS, BASIC, SEED)
            for w in ws:
                body = w.wait_json("/funnel", _windows_equal(expected), 60,
                                   f"{w.name} /funnel == basic.expected.json windows")
                assert body["windows"] == expected

            # The work is really split: each worker's local share is partial, and the shares
            # add up to the full funnel without double counting.
            locals_ = []
            for w in ws:
                status, body = w.get_json("/funnel?local=1")
                assert status == 200, body
                locals_.append(body["windows"])
            fields = [f for f in expected[0] if f not in ("window_start", "tenant", "channel")]
            total: dict[tuple, list[int]] = {}
            for rows in locals_:
                for r in rows:
                    acc = total.setdefault((r["window_start"], r["tenant"], r["channel"]), [0] * len(fields))
                    for i, f in enumerate(fields):
                        acc[i] += r[f]
            assert total == {(r["window_start"], r["tenant"], r["channel"]): [r[f] for f in fields]
                             for r in expected}
            # Each worker owns a disjoint, non-empty share of the lifecycle partitions.
            owned = []
            for w in ws:
                lines = [ln for ln in w.log_text().splitlines() if "rebuilt derived state" in ln]
                assert lines, f"{w.name}: no rebuild logged"
                owned.append(set(json.loads(lines[-1].rsplit("(partitions ", 1)[1].split(")")[0])))
            assert all(owned) and not (owned[0] & owned[1]), owned
            assert owned[0] | owned[1] == set(range(4)), owned
            assert all(w.alive() for w in ws)


def test_records_lost_before_the_agents_are_read_again_not_committed_past(kafka_bootstrap: str,
                                                                          tmp_path: Path) -> None:
    """faust can lose records between its fetch and the agents and then commit past them.
    A test hook (``FUNNELWATCH_TEST_DROP_EVERY=3``) drops the first delivery of every third
    record of every topic — input and lifecycle alike, the last record of a partition
    included. The worker must notice each hole (a later record, or its commit point stalled
    below the high watermark), read it again, commit nothing past it, and end equal to the
    golden report with lag 0."""
    expected = _expected_windows()
    with _fresh_app(kafka_bootstrap, "drop") as (app_id, topics):
        with WorkerPool(tmp_path) as pool:
            w = pool.start("w1", worker_env(app_id=app_id, bootstrap=kafka_bootstrap, topics=topics,
                                            data_dir=tmp_path / "w1",
                                            extra={**LONG_RETENTION, "FUNNELWATCH_TEST_DROP_EVERY": "3",
                                                   "FUNNELWATCH_OFFSET_STALL_S": "2"}))
            w.wait_ready(45)
            produced = produce_scenario(kafka_bootstrap, topics, INPUT_PARTITIONS, BASIC, SEED)
            body = w.wait_json("/funnel", _windows_equal(expected), 60, "/funnel == basic.expected.json "
                               "with every third record dropped once")
            assert body["windows"] == expected
            # Make the last record of one input partition one that is dropped: no later record
            # shows that hole. Copies of a record already there (duplicates: the funnel stays).
            part0 = [p for p in produced if p.role == "activity_sync" and p.partition == 0]
            end = max(p.offset for p in part0) + 1
            copies = (2 - end) % 3 + 1
            metas = asyncio.run(produce(kafka_bootstrap, topics["activity_sync"],
                                        [(None, part0[0].value, 0)] * copies))
            assert metas[-1].offset % 3 == 2
            watched = [topics["activity_sync"], topics["altcraft"], f"{app_id}-lifecycle-events"]
            wait_group_lag_zero(kafka_bootstrap, app_id, watched, 45)
            status, raw = w.get("/metrics")
            assert status == 200
            repaired = sum(float(ln.rsplit(" ", 1)[1]) for ln in raw.decode().splitlines()
                           if ln.startswith("funnel_offset_gaps_repaired_total{"))
            log_text = w.log_text()
            assert repaired >= 3, (repaired, w.log_tail(30))
            assert "re-reading them" in log_text  # a hole seen from a later record
            assert "has not moved" in log_text, w.log_tail(30)  # a dropped last record: the stall check
            assert "has no records at offsets" not in log_text  # no hole taken for real
            assert w.get_json("/funnel")[1]["windows"] == expected
            assert w.alive()
