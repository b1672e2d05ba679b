"""Stuck-message alerts end to end on a real broker (SPEC §6): live deadlines, the alert
records on the alerts topic, ``GET /alerts``, restarts after SIGKILL, and lag gating.

Every test runs real ``funnelwatch worker`` subprocesses (tests/worker_harness.py) with
short SMS SLAs and a fast alert tick, produces Activity Sync / Altcraft records whose
timestamps are near the wall clock (a live worker's "now"), and tails the alerts topic in
a background thread that records the wall-clock arrival time of every record.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tests.kafka_fixtures import produce_sync
from tests.worker_harness import WorkerPool, delete_app_topics, wait_until, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

# PII markers: none of these may ever appear in an alert record (SPEC §6, §8).
PHONE = "+61400987654"
BODY = "Hi Zelda Quokka, your one-time code is 918273"
DETAIL = "gateway accepted for +61400987654"
CUSTOM = "zelda.quokka@example.org"
PII_MARKERS = (PHONE, BODY, DETAIL, CUSTOM, "Zelda", "918273", "61400987654")

STUCK_FIELDS = {"type", "source", "tenant", "channel", "message_id", "stage", "since", "deadline",
                "detected_at", "sla_seconds"}
RESOLVED_FIELDS = {"type", "source", "tenant", "channel", "message_id", "stage", "since",
                   "resolved_stage", "resolved_at"}
CAMPAIGN_FIELDS = {"type", "tenant", "campaign_id", "error_code", "error_text", "detected_at"}
ALERT_SLACK_S = 2.0  # a stuck alert is due within SLA + 2 s, i.e. at most 2 s after its deadline


# ----------------------------------------------------------------------------- helpers


def utcnow() -> datetime:
    """Now, truncated to milliseconds (the precision the test events carry)."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


_WORKFLOW = {
    "experienceContext": {"experienceId": "501b95b3-06d3-4398-9ad4-b2563e158308"},
    "flowContext": {"flowId": "b07a5e44-04e3-4698-a799-04c558b77147", "flowName": "Alerts flow",
                    "flowVersion": 2},
    "nodeContext": {"nodeId": "node-e72ur", "nodeName": "", "outputName": "conversation_2"},
}


def as_event(kind: str, tenant: str, mid: str, when: datetime) -> bytes:
    """An Activity Sync v1.0 record (as the vendor sends it, PII included)."""
    if kind == "outbound-sms":
        data: dict[str, Any] = {"usage": [{"uom": "sms-segments-au", "qty": 1}], "recipient": PHONE,
                                "body": BODY, "messageId": mid}
        pii = ["body", "recipient"]
    else:
        data = {"messageId": mid, "detail": DETAIL}
        pii = ["detail"]
    return json.dumps({"version": "1.0", "timestamp": rfc3339(when), "tenantId": tenant,
                       "workflowContext": _WORKFLOW, "customContext": {}, "kind": kind, "data": data,
                       "pii": pii}).encode()


def camp_error(account_id: int, campaign_id: int, when: datetime) -> bytes:
    return json.dumps({"event_type": "camp_error", "event_date": rfc3339(when), "account_id": account_id,
                       "is_test": False,
                       "event_data": {"campaign_id": campaign_id, "error_code": 500,
                                      "error_text": "LOG_INTERNAL_ERROR", "launch_id": "",
                                      "message_id": 0, "resource_id": 3, "segment_id": 80,
                                      "send_message_id": ""},
                       "custom_data": {"email": CUSTOM}, "_xxh": "ab12", "_md5": "cd34",
                       "list_id": 1}).encode()


def msg_key(tenant: str, mid: str) -> str:
    return f"activity_sync|{tenant}|{mid}"


class AlertTail:
    """Reads the alerts topic from the beginning in a background thread and records
    ``(arrival wall-clock seconds, key, raw value, decoded value)`` for every record."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self._records: list[tuple[float, bytes | None, bytes, dict]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"tail-{topic}", daemon=True)

    def __enter__(self) -> AlertTail:
        self._thread.start()
        if not self._ready.wait(20):
            raise TimeoutError(f"alert tail on {self.topic} did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - surfaced by records()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", client_id="funnelwatch-tests-tail")
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            self._ready.set()
            while not self._stop.is_set():
                batch = await consumer.getmany(*tps, timeout_ms=100)
                arrived = time.time()
                got = sorted((r for recs in batch.values() for r in recs), key=lambda r: r.timestamp)
                with self._lock:
                    for r in got:
                        self._records.append((arrived, r.key, r.value, json.loads(r.value)))
        finally:
            await consumer.stop()

    def records(self) -> list[tuple[float, bytes | None, bytes, dict]]:
        if self._error is not None:
            raise RuntimeError(f"alert tail failed: {self._error!r}")
        with self._lock:
            return list(self._records)

    def alerts(self, type_: str | None = None) -> list[dict]:
        return [v for _, _, _, v in self.records() if type_ is None or v.get("type") == type_]

    def wait(self, pred: Callable[[list[dict]], bool], timeout_s: float, desc: str) -> list[dict]:
        try:
            wait_until(lambda: pred(self.alerts()), timeout_s, 0.1, desc)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; alerts so far: {json.dumps(self.alerts(), indent=None)[:4000]}") from None
        return self.alerts()


def stuck_pairs(alerts: list[dict]) -> Counter:
    return Counter((a["message_id"], a["stage"]) for a in alerts if a["type"] == "stuck")


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` (exact sample name) whose labels include ``labels``."""
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total += s.value
    return total


def assert_no_pii(raw: bytes) -> None:
    text = raw.decode()
    for marker in PII_MARKERS:
        assert marker not in text, f"PII {marker!r} leaked into alert {text}"
    obj = json.loads(raw)
    for field in ("recipient", "body", "detail", "custom_data", "_xxh", "_md5"):
        assert field not in obj, f"PII field {field!r} in alert {text}"


@pytest.fixture
def alert_env(kafka_bootstrap: str, unique_topics, tmp_path: Path):
    """Fresh topics, app id and data dir; yields ``make_env(**extra) -> env`` and cleans up."""
    topics = unique_topics({"activity-sync-events": 2, "altcraft-action-hooks": 1, "message-alerts": 2,
                            "dead-letters": 1, "funnel-windows": 1})
    roles = {"activity_sync": topics["activity-sync-events"], "altcraft": topics["altcraft-action-hooks"],
             "alerts": topics["message-alerts"], "dead_letters": topics["dead-letters"],
             "funnel_windows": topics["funnel-windows"]}
    app_id = f"fw-alerts-{secrets.token_hex(4)}"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ctx: dict[str, Any] = {"bootstrap": kafka_bootstrap, "topics": roles, "app_id": app_id,
                           "data_dir": data_dir}

    def make_env(**extra: str) -> dict[str, str]:
        base = {"FUNNELWATCH_ALERT_TICK_S": "0.5", "FUNNELWATCH_LOG_LEVEL": "INFO",
                "FUNNELWATCH_PUBLISH_INTERVAL_S": "5"}
        base.update(extra)
        return worker_env(app_id=app_id, bootstrap=kafka_bootstrap, topics=roles, data_dir=data_dir,
                          topic_partitions=2, extra=base)

    ctx["make_env"] = make_env
    try:
        yield ctx
    finally:
        delete_app_topics(kafka_bootstrap, app_id)


def produce_events(bootstrap: str, topic: str, events: list[tuple[str, bytes]]) -> None:
    """Produce raw records keyed by message id (one message's events stay in order)."""
    produce_sync(bootstrap, topic, [(mid.encode(), value, None) for mid, value in events])


# ------------------------------------------------------------------------------- tests


def test_stuck_and_resolved_alerts_live(alert_env: dict) -> None:
    """SMS messages stuck at queued / sent each get exactly one timely stuck alert (SPEC §6
    fields, keyed by message key, no PII); delivered and failed ones get none; a late
    advancing event resolves exactly once; GET /alerts lists the open ones; camp_error
    raises a campaign_error alert."""
    t_start = time.monotonic()
    bs, topics = alert_env["bootstrap"], alert_env["topics"]
    sla = {"queued": 3, "sent": 4}
    env = alert_env["make_env"](FUNNELWATCH_SLA_S=json.dumps({"sms": sla}))
    tenant = "acme"
    with WorkerPool() as pool, AlertTail(bs, topics["alerts"], 2) as tail:
        w = pool.start("w1", env)
        w.wait_ready(45)
        t0 = utcnow()
        q = [f"q{i}-{secrets.token_hex(3)}" for i in range(3)]  # stop at queued
        s = [f"s{i}-{secrets.token_hex(3)}" for i in range(3)]  # stop at sent
        d = [f"d{i}-{secrets.token_hex(3)}" for i in range(2)]  # delivered in time
        f = [f"f{i}-{secrets.token_hex(3)}" for i in range(1)]  # failed in time
        reached: dict[tuple[str, str], datetime] = {}
        events: list[tuple[str, bytes]] = []
        for mid in q:
            events.append((mid, as_event("outbound-sms", tenant, mid, t0)))
            reached[(mid, "queued")] = t0
        for mid in s:
            events.append((mid, as_event("outbound-sms", tenant, mid, t0 - timedelta(milliseconds=400))))
            events.append((mid, as_event("message-sent", tenant, mid, t0)))
            reached[(mid, "sent")] = t0
        for mid in d:
            events += [(mid, as_event("outbound-sms", tenant, mid, t0 - timedelta(milliseconds=300))),
                       (mid, as_event("message-sent", tenant, mid, t0 - timedelta(milliseconds=200))),
                       (mid, as_event("message-delivered", tenant, mid, t0))]
        for mid in f:
            events += [(mid, as_event("outbound-sms", tenant, mid, t0 - timedelta(milliseconds=300))),
                       (mid, as_event("message-failed", tenant, mid, t0))]
        produce_events(bs, topics["activity_sync"], events)
        produce_sync(bs, topics["altcraft"], [(None, camp_error(23, 9, utcnow()), None)])

        expected = {(mid, "queued") for mid in q} | {(mid, "sent") for mid in s}
        tail.wait(lambda a: set(stuck_pairs(a)) >= expected, sla["sent"] + ALERT_SLACK_S + 8,
                  "a stuck alert for every stuck message")
        tail.wait(lambda a: any(x["type"] == "campaign_error" for x in a), 10, "the campaign_error alert")

        # --- the stuck alerts: content, timeliness, keys, no PII
        arrivals: dict[tuple[str, str], float] = {}
        for arrived, key, raw, a in tail.records():
            assert_no_pii(raw)
            if a["type"] != "stuck":
                continue
            pair = (a["message_id"], a["stage"])
            assert pair in expected, f"unexpected stuck alert {a}"
            arrivals.setdefault(pair, arrived)
            assert set(a) == STUCK_FIELDS, a
            assert key == msg_key(tenant, a["message_id"]).encode()
            assert (a["source"], a["tenant"], a["channel"]) == ("activity_sync", tenant, "sms"), a
            assert a["sla_seconds"] == sla[a["stage"]], a
            since, deadline, detected = parse_ts(a["since"]), parse_ts(a["deadline"]), parse_ts(a["detected_at"])
            assert since == reached[pair], (a, reached[pair])
            assert deadline == since + timedelta(seconds=sla[a["stage"]]), a
            late = (detected - deadline).total_seconds()
            assert 0 < late <= ALERT_SLACK_S, f"detected {late:.3f} s after the deadline: {a}"
            arrival_late = arrived - deadline.timestamp()
            assert 0 < arrival_late <= ALERT_SLACK_S, f"arrived {arrival_late:.3f} s after the deadline: {a}"
        camp = [a for a in tail.alerts() if a["type"] == "campaign_error"]
        assert len(camp) == 1, camp
        assert set(camp[0]) == CAMPAIGN_FIELDS, camp[0]
        assert (camp[0]["tenant"], camp[0]["campaign_id"], camp[0]["error_code"], camp[0]["error_text"]) == (
            "23", "9", 500, "LOG_INTERNAL_ERROR"), camp[0]
        parse_ts(camp[0]["detected_at"])

        # --- GET /alerts: the open ones, filters
        body = w.wait_json("/alerts", lambda b: b.get("total") == len(expected), 10, "GET /alerts lists 6")
        assert {(r["message_id"], r["stage"]) for r in body["alerts"]} == expected
        for r in body["alerts"]:
            assert r["type"] == "stuck" and r["tenant"] == tenant and r["channel"] == "sms", r
            assert_no_pii(json.dumps(r).encode())
        deadlines = [r["deadline"] for r in body["alerts"]]
        assert deadlines == sorted(deadlines, reverse=True), "newest deadline first"
        for stage, mids in (("queued", q), ("sent", s)):
            st, b = w.get_json(f"/alerts?stage={stage}")
            assert st == 200 and b["total"] == 3, b
            assert {r["message_id"] for r in b["alerts"]} == set(mids) and {r["stage"] for r in b["alerts"]} == {stage}
        st, b = w.get_json(f"/alerts?tenant={tenant}&channel=sms&stage=sent")
        assert st == 200 and b["total"] == 3, b
        for query in ("tenant=nobody", "channel=email", "stage=delivered"):
            st, b = w.get_json(f"/alerts?{query}")
            assert st == 200 and b["total"] == 0 and b["alerts"] == [], (query, b)
        st, b = w.get_json("/alerts?limit=2&offset=1")
        assert st == 200 and b["total"] == 6 and len(b["alerts"]) == 2 and b["alerts"] == body["alerts"][1:3], b

        # --- late events: q0 delivered (resolves), q1 sent (resolves queued, later stuck at sent)
        t1 = utcnow()
        produce_events(bs, topics["activity_sync"], [(q[0], as_event("message-delivered", tenant, q[0], t1)),
                                                      (q[1], as_event("message-sent", tenant, q[1], t1))])
        alerts = tail.wait(lambda a: {(x["message_id"], x["stage"]) for x in a if x["type"] == "resolved"}
                           >= {(q[0], "queued"), (q[1], "queued")}, 10, "resolved alerts for q0 and q1")
        resolved = {x["message_id"]: x for x in alerts if x["type"] == "resolved"}
        for mid, rstage in ((q[0], "delivered"), (q[1], "sent")):
            r = resolved[mid]
            assert RESOLVED_FIELDS <= set(r), r
            assert (r["source"], r["tenant"], r["channel"], r["stage"]) == ("activity_sync", tenant, "sms", "queued"), r
            assert r["resolved_stage"] == rstage, r
            assert parse_ts(r["resolved_at"]) == t1, (r, rfc3339(t1))
            assert parse_ts(r["since"]) == t0, r
        # q1 is now at `sent` (since t1): a new stuck alert for that stage, once
        tail.wait(lambda a: stuck_pairs(a)[(q[1], "sent")] == 1, sla["sent"] + ALERT_SLACK_S + 6,
                  "stuck alert for q1 at sent")
        [q1_sent] = [x for x in tail.alerts() if x["type"] == "stuck" and (x["message_id"], x["stage"]) == (q[1], "sent")]
        assert parse_ts(q1_sent["since"]) == t1
        assert 0 < (parse_ts(q1_sent["detected_at"]) - parse_ts(q1_sent["deadline"])).total_seconds() <= ALERT_SLACK_S

        open_now = (expected - {(q[0], "queued"), (q[1], "queued")}) | {(q[1], "sent")}
        body = w.wait_json("/alerts", lambda b: {(r["message_id"], r["stage"]) for r in b["alerts"]} == open_now,
                           10, "GET /alerts without the resolved ones")
        assert body["total"] == 5 and q[0] not in {r["message_id"] for r in body["alerts"]}
        st, b = w.get_json("/alerts?stage=queued")
        assert st == 200 and [r["message_id"] for r in b["alerts"]] == [q[2]], b
        st, b = w.get_json("/alerts?stage=sent")
        assert st == 200 and {r["message_id"] for r in b["alerts"]} == {q[1], *s}, b

        # --- a few more ticks: nothing repeats, nothing for delivered / failed messages
        time.sleep(2.0)
        final = tail.alerts()
        pairs = stuck_pairs(final)
        assert set(pairs) == expected | {(q[1], "sent")}, pairs
        assert all(n == 1 for n in pairs.values()), f"duplicate stuck alerts: {pairs}"
        res = Counter((x["message_id"], x["stage"]) for x in final if x["type"] == "resolved")
        assert res == Counter({(q[0], "queued"): 1, (q[1], "queued"): 1}), res
        quiet = set(d) | set(f)
        assert not [x for x in final if x.get("message_id") in quiet], "alerts for delivered/failed messages"
        assert len([x for x in final if x["type"] == "campaign_error"]) == 1
        for _, _, raw, _ in tail.records():
            assert_no_pii(raw)
        st, metrics = w.get("/metrics")
        assert st == 200
        text = metrics.decode()
        assert metric_value(text, "funnel_alerts_total", {"type": "stuck"}) == 7
        assert metric_value(text, "funnel_alerts_total", {"type": "resolved"}) == 2
        assert metric_value(text, "funnel_alerts_total", {"type": "campaign_error"}) == 1
        assert metric_value(text, "funnel_stuck_messages", {"stage": "queued"}) == 1
        assert metric_value(text, "funnel_stuck_messages", {"stage": "sent"}) == 4
        w.check_alive()
    print(f"\n[alerts] live stuck/resolved test took {time.monotonic() - t_start:.1f}s")


@pytest.mark.parametrize("store", ["memory://", "rocksdict://"])
def test_sigkill_restart_no_duplicates_and_missed_deadlines_fire(alert_env: dict, store: str) -> None:
    """As soon as stuck alerts went out, SIGKILL the worker; deadlines of messages produced
    before the kill fall due while it is down. On restart (same app id and data dir) every
    earlier alert stays unique on the topic and the missed deadlines fire after recovery.
    ``memory://`` rebuilds the table from the changelog alone; ``rocksdict://`` reopens its
    local files (written up to the kill) and reads the changelog from there."""
    t_start = time.monotonic()
    bs, topics = alert_env["bootstrap"], alert_env["topics"]
    sla = {"queued": 3, "sent": 12}
    # A SIGKILLed member stays in the consumer group until its session times out; the
    # restarted worker's rebalance waits for that (faust's default broker_session_timeout is
    # 60 s, read from BROKER_SESSION_TIMEOUT; funnelwatch has no setting of its own for it).
    env = alert_env["make_env"](FUNNELWATCH_SLA_S=json.dumps({"sms": sla}), FUNNELWATCH_STORE=store,
                                BROKER_SESSION_TIMEOUT="10", BROKER_HEARTBEAT_INTERVAL="1")
    tenant = "kilo"
    early = [f"early{i}-{secrets.token_hex(3)}" for i in range(6)]  # stuck at queued, alert before the kill
    late = [f"late{i}-{secrets.token_hex(3)}" for i in range(6)]  # stuck at sent, due while the worker is down
    with WorkerPool() as pool, AlertTail(bs, topics["alerts"], 2) as tail:
        w1 = pool.start("w1", env)
        w1.wait_ready(45)
        t0 = utcnow()
        events = [(mid, as_event("outbound-sms", tenant, mid, t0)) for mid in early]
        for mid in late:
            events += [(mid, as_event("outbound-sms", tenant, mid, t0 - timedelta(milliseconds=500))),
                       (mid, as_event("message-sent", tenant, mid, t0))]
        produce_events(bs, topics["activity_sync"], events)
        late_deadline = t0 + timedelta(seconds=sla["sent"])
        tail.wait(lambda a: set(stuck_pairs(a)) >= {(m, "queued") for m in early}, sla["queued"] + 8,
                  "stuck alerts for the early messages")
        assert not [a for a in tail.alerts() if a["message_id"] in late], "late deadlines fired too soon"
        assert utcnow() < late_deadline - timedelta(seconds=2), "too slow: late deadlines not after the kill"
        os.killpg(w1.pid, signal.SIGKILL)
        w1.proc.wait(10)
        killed_at = utcnow()
        # the late deadlines fall due while no worker runs
        time.sleep(max(0.0, (late_deadline - utcnow()).total_seconds()) + 1.0)
        assert not [a for a in tail.alerts() if a["message_id"] in late]
        restarted_at = utcnow()
        w2 = pool.start("w2", env)
        w2.wait_ready(60)
        ready_at = utcnow()
        tail.wait(lambda a: set(stuck_pairs(a)) >= {(m, "sent") for m in late}, 20,
                  "missed deadlines fire after recovery")
        time.sleep(2.5)  # several more ticks: anything duplicated would show up now
        alerts = tail.alerts()
        pairs = stuck_pairs(alerts)
        assert set(pairs) == {(m, "queued") for m in early} | {(m, "sent") for m in late}, pairs
        dup = {p: n for p, n in pairs.items() if n != 1}
        assert not dup, f"stuck alerts repeated after SIGKILL + restart: {dup}"
        for a in alerts:
            assert a["type"] == "stuck"
            if a["message_id"] in late:
                assert parse_ts(a["deadline"]) == late_deadline, a
                assert killed_at < late_deadline < restarted_at, "the deadline fell due while the worker was down"
                detected = parse_ts(a["detected_at"])
                assert ready_at - timedelta(seconds=1) <= detected <= ready_at + timedelta(seconds=5), (
                    f"missed deadline detected {(detected - ready_at).total_seconds():.2f}s after ready: {a}")
        # the restarted worker knows all of them as open (rebuilt from the changelogged marks)
        body = w2.wait_json("/alerts", lambda b: b.get("total") == 12, 10, "GET /alerts lists all 12")
        assert {(r["message_id"], r["stage"]) for r in body["alerts"]} == set(pairs)
        w2.check_alive()
        print(f"\n[alerts] {store} restart: killed {killed_at:%T}, restarted {restarted_at:%T}, ready after "
              f"{(ready_at - restarted_at).total_seconds():.1f}s")
    print(f"[alerts] SIGKILL test took {time.monotonic() - t_start:.1f}s")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("store", ["memory://", "rocksdict://"])
def test_marks_lost_in_a_crash_are_taken_back_from_the_alerts_topic(alert_env: dict, store: str) -> None:
    """The worst moment to die: alerts acked, the table writes that mark them not yet sent.
    A test hook exits the process exactly there (``os._exit``: nothing flushed), first after
    the stuck alerts, then, in the next worker, after a resolved one. Each next owner must
    take the marks back from the alerts topic: no alert repeats, the stuck ones are listed."""
    t_start = time.monotonic()
    bs, topics = alert_env["bootstrap"], alert_env["topics"]
    sla = {"queued": 3, "sent": 120}
    base = {"FUNNELWATCH_SLA_S": json.dumps({"sms": sla}), "FUNNELWATCH_STORE": store,
            "BROKER_SESSION_TIMEOUT": "10", "BROKER_HEARTBEAT_INTERVAL": "1"}
    make_env = alert_env["make_env"]
    tenant = "lima"
    mids = [f"m{i}-{secrets.token_hex(3)}" for i in range(6)]
    want = {(m, "queued") for m in mids}

    def resolved_pairs(alerts: list[dict]) -> Counter:
        return Counter((a["message_id"], a["stage"]) for a in alerts if a["type"] == "resolved")

    with WorkerPool() as pool, AlertTail(bs, topics["alerts"], 2) as tail:
        w1 = pool.start("w1", make_env(**base, FUNNELWATCH_TEST_EXIT_AFTER_ALERTS=f"stuck:{len(mids)}"))
        w1.wait_ready(45)
        t0 = utcnow()
        produce_events(bs, topics["activity_sync"], [(m, as_event("outbound-sms", tenant, m, t0)) for m in mids])
        tail.wait(lambda a: set(stuck_pairs(a)) >= want, sla["queued"] + 10, "stuck alerts")
        assert w1.proc.wait(15) == 137, "the test hook should have ended w1 right after the acks"

        w2 = pool.start("w2", make_env(**base, FUNNELWATCH_TEST_EXIT_AFTER_ALERTS="resolved:1"))
        w2.wait_ready(60)
        body = w2.wait_json("/alerts", lambda b: b.get("total") == len(mids), 15, "w2 lists the 6 stuck messages")
        assert {(r["message_id"], r["stage"]) for r in body["alerts"]} == want
        time.sleep(3.0)  # ticks: the overdue checks write the marks taken back; nothing is re-sent
        assert stuck_pairs(tail.alerts()) == Counter({p: 1 for p in want}), stuck_pairs(tail.alerts())
        st, raw = w2.get("/metrics")
        assert st == 200
        text = raw.decode()
        assert metric_value(text, "funnel_alert_marks_reconciled_total", {"type": "stuck"}) >= 1, (
            "w1 died before writing its last marks: w2 must have taken some back")
        assert metric_value(text, "funnel_alerts_total", {"type": "stuck"}) == 0
        assert metric_value(text, "funnel_stuck_messages", {"stage": "queued"}) == len(mids)
        assert metric_value(text, "funnel_alert_reconcile_failures_total") == 0

        produce_events(bs, topics["activity_sync"], [(mids[0], as_event("message-delivered", tenant, mids[0],
                                                                          utcnow()))])
        tail.wait(lambda a: resolved_pairs(a)[(mids[0], "queued")] >= 1, 15, "resolved alert for m0")
        assert w2.proc.wait(15) == 137, "the test hook should have ended w2 right after the resolved ack"

        w3 = pool.start("w3", make_env(**base))
        w3.wait_ready(60)
        w3.wait_json("/alerts", lambda b: b.get("total") == len(mids) - 1, 15, "w3 lists the 5 still stuck")
        time.sleep(3.0)
        alerts = tail.alerts()
        assert stuck_pairs(alerts) == Counter({p: 1 for p in want}), stuck_pairs(alerts)
        assert resolved_pairs(alerts) == Counter({(mids[0], "queued"): 1}), resolved_pairs(alerts)
        st, raw = w3.get("/metrics")
        text = raw.decode()
        assert metric_value(text, "funnel_alert_marks_reconciled_total", {"type": "resolved"}) == 1
        assert metric_value(text, "funnel_alerts_total") == 0
        assert metric_value(text, "funnel_stuck_messages", {"stage": "queued"}) == len(mids) - 1
        w3.check_alive()
    print(f"\n[alerts] {store}: lost marks taken back twice; test took {time.monotonic() - t_start:.1f}s")


# The dead-letter stretch guards a fixed bug: the gate once used faust's read offsets, which
# advance when a record is *buffered*, so it opened while deliveries were still unprocessed.


@pytest.mark.parametrize(("n_stuck", "n_ok", "filler"), [
    (3000, 300, 0),
    (1000, 200, 7000),
], ids=["plain", "dead-letter-stretch"])
def test_backlog_gating_alerts_only_after_catch_up(alert_env: dict, n_stuck: int, n_ok: int, filler: int) -> None:
    """A backlog produced before the worker starts: no stuck alert while the consumer lags
    more than alert_max_lag (suppressed and counted), then every due deadline fires once;
    messages delivered later in the backlog never alert.

    Per input partition the backlog is: outbound-sms of stuck and `ok` messages (all long
    overdue), then ``filler`` records that go to dead letters (v0.0 kind ``queued``), then the
    deliveries of the `ok` messages, then 2 × alert_max_lag more dead letters. Alerting before
    the worker has consumed the deliveries would raise false stuck alerts for the `ok` messages."""
    t_start = time.monotonic()
    bs, topics = alert_env["bootstrap"], alert_env["topics"]
    max_lag = 50
    # A tick every 0.1 s (0.5 s elsewhere): the plain backlog is consumed in well under a
    # second on a quiet machine, and the test needs ticks while it lags (more chances to alert
    # early, too).
    env = alert_env["make_env"](FUNNELWATCH_SLA_S=json.dumps({"sms": {"queued": 3, "sent": 4}}),
                                FUNNELWATCH_ALERT_MAX_LAG=str(max_lag), FUNNELWATCH_ALERT_TICK_S="0.1")
    tenant = "backlog"
    old = utcnow() - timedelta(seconds=120)  # every deadline is long past
    stuck = [f"st{i:05d}" for i in range(n_stuck)]
    ok = [f"ok{i:05d}" for i in range(n_ok)]
    records: list[tuple[None, bytes, int]] = []
    for p in (0, 1):
        mids = stuck[p::2] + ok[p::2]
        mids.sort(key=lambda m: m[2:])  # interleave stuck and ok
        records += [(None, as_event("outbound-sms", tenant, m, old + timedelta(milliseconds=i)), p)
                    for i, m in enumerate(mids)]
        records += [(None, as_event("queued", tenant, f"dl{p}-{i}", old), p) for i in range(filler // 2)]
        records += [(None, as_event("message-delivered", tenant, m, old + timedelta(seconds=5)), p)
                    for m in ok[p::2]]
        # SPEC §6 allows alerts once a partition lags at most alert_max_lag records; records past
        # the deliveries make "lag <= max_lag" imply "the deliveries were consumed".
        records += [(None, as_event("queued", tenant, f"tail{p}-{i}", old), p) for i in range(2 * max_lag)]
    produce_sync(bs, topics["activity_sync"], records)
    tail_dead_letters = 2 * 2 * max_lag
    total = len(records)

    samples: list[tuple[float, float, float, float]] = []  # (t_req, t_resp, ingested, suppressed)
    with WorkerPool() as pool, AlertTail(bs, topics["alerts"], 2) as tail:
        w = pool.start("w1", env)
        stop = threading.Event()

        def poll_metrics() -> None:
            while not stop.is_set():
                t_req = time.time()
                try:
                    st, body = w.get("/metrics", timeout_s=3)
                except Exception:  # noqa: BLE001 - not up yet
                    time.sleep(0.05)
                    continue
                if st == 200:
                    text = body.decode()
                    samples.append((t_req, time.time(),
                                    metric_value(text, "funnel_events_total", {"source": "activity_sync"}),
                                    metric_value(text, "funnel_alerts_suppressed_total")))
                time.sleep(0.05)

        poller = threading.Thread(target=poll_metrics, daemon=True)
        poller.start()
        try:
            w.wait_ready(45)
            tail.wait(lambda a: len(stuck_pairs(a)) >= n_stuck, 45, f"{n_stuck} stuck alerts")
            time.sleep(2.0)  # more ticks: nothing may repeat
        finally:
            stop.set()
            poller.join(5)
        recs = tail.records()
        pairs = stuck_pairs([v for *_, v in recs])
        assert set(pairs) == {(m, "queued") for m in stuck}, (
            f"{len(pairs)} alerted; false alerts: {sorted(set(m for m, _ in pairs) - set(stuck))[:10]}")
        dup = {p: n for p, n in pairs.items() if n != 1}
        assert not dup, f"duplicate stuck alerts: {list(dup.items())[:10]}"
        assert not [v for *_, v in recs if v["type"] != "stuck"], "only stuck alerts expected"

        st, body = w.get("/metrics")
        text = body.decode()
        suppressed = metric_value(text, "funnel_alerts_suppressed_total")
        ingested = metric_value(text, "funnel_events_total", {"source": "activity_sync"})
        assert ingested == total, (ingested, total)
        assert metric_value(text, "funnel_events_rejected_total", {"reason": "deprecated_kind"}) == (
            filler + tail_dead_letters)
        assert suppressed > 0, "the backlog was never gated (funnel_alerts_suppressed_total == 0)"
        assert metric_value(text, "funnel_alerts_total", {"type": "stuck"}) == n_stuck

        # No alert before the worker had caught up to within max_lag of the input: find the
        # last metrics sample (requested before the first alert was detected) whose ingest
        # count shows a lag > max_lag; the first alert must come after that sample was taken.
        first_detected = min(parse_ts(v["detected_at"]).timestamp() for *_, v in recs)
        first_arrival = min(r[0] for r in recs)
        lagging = [smp for smp in samples if total - smp[2] > max_lag]
        assert lagging, "no metrics sample while the backlog was being consumed (too fast to observe)"
        last_lagging_req = max(smp[0] for smp in lagging)
        assert first_detected > last_lagging_req, (
            f"first stuck alert detected {last_lagging_req - first_detected:.3f}s before a sample that "
            f"still saw lag > {max_lag} (ingested {[s[2] for s in lagging][-1]:.0f} of {total})")
        started = min((smp[0] for smp in samples if smp[2] > 0), default=samples[0][0])
        caught_up = min((smp[1] for smp in samples if smp[2] >= total - max_lag), default=float("nan"))
        last_detected = max(parse_ts(v["detected_at"]).timestamp() for *_, v in recs)
        print(f"\n[alerts] backlog {total} events ({filler} dead letters): ingest {started:.0f}+{caught_up - started:.2f}s to within "
              f"{max_lag}; first alert {first_detected - last_lagging_req:.2f}s after the last lagging sample "
              f"(arrived {first_arrival - first_detected:.2f}s after detection), all {n_stuck} detected within "
              f"{last_detected - first_detected:.2f}s; suppressed {suppressed:.0f}")
        w.check_alive()
    print(f"[alerts] backlog test took {time.monotonic() - t_start:.1f}s")
