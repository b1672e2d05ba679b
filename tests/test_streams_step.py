"""The per-message step (SPEC §5, §6): streams.step.step, in process, no broker.

Every test drives ``step`` the way agents/lifecycle.py does: one call per message key per
batch, with the stored state (round-tripped through its bytes when a test says "restart")
and the ops of the batch; then it checks the state and the Effects the agent carries out.
"""
from __future__ import annotations

import random
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.alerts import stuck_alert
from streams.events import message_key
from streams.kinds import AC_LIFECYCLE, AS_LIFECYCLE, STAGE_RANK
from streams.lifecycle import MessageState, summarize
from streams.step import OP_CHECK, OP_EVENT, OP_EXPIRE, Effects, StepConfig, step
from streams.stuck import Deadline, SlaTable, deadline, resolved_bit, stuck_bit
from streams.timeparse import format_ts_us

S = 1_000_000
W = 3600 * S  # default window
RET = 7 * 86400 * S  # default message_retention
T0 = 1724763600 * S  # 2024-08-27T13:00:00Z
CFG = StepConfig(window_us=W, retention_us=RET, slas=SlaTable())

AS_KEY = message_key("activity_sync", "acme", "m1")
AC_KEY = message_key("altcraft", "23", "m1")
STUCK_FIELDS = {"type", "source", "tenant", "channel", "message_id", "stage", "since", "deadline",
                "detected_at", "sla_seconds"}
# SPEC §6 table, transcribed: channel -> (queued -> sent, sent -> delivered)
SPEC_SLA = {"sms": (120, 900), "email": (300, 3600), "push": (120, 900), "telegram": (120, 900),
            "unknown": (300, 3600)}


# ---- builders ------------------------------------------------------------------------------------------
def code(kind: str) -> int:
    return (AS_LIFECYCLE.get(kind) or AC_LIFECYCLE[kind]).code


def E(*pairs) -> tuple:
    """``E(("outbound-email", T0), ("message-sent", T0 + S))`` -> one OP_EVENT op."""
    op: list = [OP_EVENT]
    for kind, ts in pairs:
        op += [code(kind), ts]
    return tuple(op)


def CHECK(stage: str) -> tuple:
    return (OP_CHECK, STAGE_RANK[stage])


EXPIRE = (OP_EXPIRE,)


def rt(st: MessageState | None) -> MessageState | None:
    """The state as the table stores it (a restart reads it back from its bytes)."""
    return None if st is None else MessageState.from_bytes(st.to_bytes())


def run(state, ops, now, *, key=AS_KEY, cfg=CFG, published=None) -> Effects:
    return step(key, state, list(ops), now, cfg, published)


def stored(events, now=None, *, key=AS_KEY, cfg=CFG) -> MessageState:
    """A stored state made of ``events`` [(kind, ts)], applied at ``now`` (default: last ts)."""
    fx = run(None, [E(*events)], now if now is not None else max(ts for _, ts in events), key=key, cfg=cfg)
    assert fx.write and fx.state is not None
    return rt(fx.state)


def source_of(key: str) -> str:
    return key.split("|")[0]


def summed(delta) -> dict:
    """A funnel delta summed per row key, zero rows dropped."""
    out: dict = defaultdict(lambda: None)
    for row, vec in delta:
        cur = out[row]
        out[row] = tuple(vec) if cur is None else tuple(a + b for a, b in zip(cur, vec))
    return {k: v for k, v in out.items() if any(v)}


def closed_or_unknown(fx: Effects) -> bool:
    """A message without an open stuck alert: the step says so, or leaves the open list alone."""
    return not fx.open_known or fx.open_alert is None


def open_or_unknown(fx: Effects, stage: str) -> bool:
    """A message whose stuck alert at ``stage`` stays open: the step must not close it."""
    return not fx.open_known or (fx.open_alert is not None and fx.open_alert["stage"] == stage)


def stuck_now(events, stage, now=None, *, key=AS_KEY, cfg=CFG):
    """Store ``events``, then run a due check for ``stage``: (effects of the check, its deadline)."""
    st = stored(events, key=key, cfg=cfg)
    d = deadline(summarize(source_of(key), st.events), key.split("|")[1], cfg.slas)
    assert d is not None and d.stage == stage
    fx = run(st, [CHECK(stage)], now if now is not None else d.deadline_us + 1, key=key, cfg=cfg)
    assert len(fx.alerts) == 1 and fx.alerts[0]["type"] == "stuck"
    return fx, d


# ---- stuck check (OP_CHECK) ---------------------------------------------------------------------------------
def test_stuck_alert_exact_record():
    st = stored([("outbound-email", T0)])
    now = T0 + 301 * S + 500_000
    fx = run(st, [CHECK("queued")], now)
    assert fx.alerts == [{
        "type": "stuck", "source": "activity_sync", "tenant": "acme", "channel": "email", "message_id": "m1",
        "stage": "queued", "since": "2024-08-27T13:00:00Z", "deadline": "2024-08-27T13:05:00Z",
        "detected_at": "2024-08-27T13:05:01.5Z", "sla_seconds": 300,
    }]
    assert fx.state is st and st.alerted == stuck_bit(0)
    assert fx.write and not fx.delete
    assert fx.open_known and fx.open_alert is fx.alerts[0]
    assert fx.settled_stages == [] and fx.delta == [] and fx.inflight_delta == 0 and fx.created == 0
    assert (fx.source, fx.tenant) == ("activity_sync", "acme")


# key, events, channel, stage, since, sla (SPEC §6 default table)
DEFAULT_CASES = [
    (AS_KEY, [("outbound-sms", T0)], "sms", "queued", T0),
    (AS_KEY, [("outbound-email", T0)], "email", "queued", T0),
    (AS_KEY, [("outbound-sms", T0), ("message-sent", T0 + 7 * S)], "sms", "sent", T0 + 7 * S),
    (AS_KEY, [("outbound-email", T0), ("message-sent", T0 + 7 * S)], "email", "sent", T0 + 7 * S),
    (AS_KEY, [("message-sent", T0)], "unknown", "sent", T0),
    # out of order: the outbound arrives after the sent; since = earliest evidence of `sent`
    (AS_KEY, [("message-sent", T0 + 60 * S), ("outbound-sms", T0)], "sms", "sent", T0 + 60 * S),
    # two sent events: stage_reached_at is the earliest
    (AS_KEY, [("outbound-email", T0), ("message-sent", T0 + 90 * S), ("message-sent", T0 + 30 * S)],
     "email", "sent", T0 + 30 * S),
    (AC_KEY, [("send", T0)], "email", "sent", T0),
    (AC_KEY, [("send_sms", T0)], "sms", "sent", T0),
    (AC_KEY, [("send_push", T0)], "push", "sent", T0),
    (AC_KEY, [("telegram_bot_send", T0)], "telegram", "sent", T0),
    (AC_KEY, [("telegram_group_send", T0)], "telegram", "sent", T0),
]


@pytest.mark.parametrize("key,events,channel,stage,since", DEFAULT_CASES)
def test_stuck_check_with_default_slas(key, events, channel, stage, since):
    sla = SPEC_SLA[channel][STAGE_RANK[stage]]
    dl = since + sla * S
    source, tenant, mid = key.split("|")
    # after the events: the deadline is scheduled
    fx0 = run(None, [E(*events)], T0 + 100 * S, key=key)
    assert fx0.schedule and fx0.deadline == Deadline(stage, since, dl, sla)
    st = rt(fx0.state)
    # due (now > deadline): one alert, exactly the SPEC §6 fields
    fx = run(st, [CHECK(stage)], dl + 1, key=key)
    assert len(fx.alerts) == 1
    a = fx.alerts[0]
    assert set(a) == STUCK_FIELDS
    assert a == {"type": "stuck", "source": source, "tenant": tenant, "channel": channel, "message_id": mid,
                 "stage": stage, "since": format_ts_us(since), "deadline": format_ts_us(dl),
                 "detected_at": format_ts_us(dl + 1), "sla_seconds": sla}
    assert fx.state.alerted == stuck_bit(STAGE_RANK[stage])
    assert fx.write and fx.open_known and fx.open_alert == a


@pytest.mark.parametrize("key,events,channel,stage,since", DEFAULT_CASES)
def test_check_not_yet_due_rearms(key, events, channel, stage, since):
    sla = SPEC_SLA[channel][STAGE_RANK[stage]]
    st = stored(events, key=key)
    before = st.to_bytes()
    for now in (since + sla * S, since + sla * S - 1, since):  # now <= deadline: not stuck
        fx = run(st, [CHECK(stage)], now, key=key)
        assert fx.alerts == []
        assert fx.schedule and fx.deadline == Deadline(stage, since, since + sla * S, sla)
        assert not fx.write and not fx.delete and closed_or_unknown(fx)
        assert st.to_bytes() == before


# events, check stage: the message already left that stage (or never had a deadline)
@pytest.mark.parametrize("events,stage", [
    ([("outbound-email", T0), ("message-sent", T0 + S)], "queued"),
    ([("outbound-email", T0), ("message-delivered", T0 + S)], "queued"),
    ([("outbound-email", T0), ("message-delivered", T0 + S)], "sent"),
    ([("outbound-sms", T0), ("message-failed", T0 + S)], "queued"),
    ([("message-sent", T0), ("message-failed", T0 + S)], "sent"),
    ([("message-link-clicked", T0)], "sent"),
    ([("message-sent", T0)], "queued"),  # sent implies queued: highest is sent
])
def test_check_at_a_stage_already_left_does_nothing(events, stage):
    st = stored(events)
    before = st.to_bytes()
    fx = run(st, [CHECK(stage)], T0 + 30 * 86400 * S)
    assert fx.alerts == [] and not fx.write and not fx.schedule and fx.deadline is None
    assert closed_or_unknown(fx) and st.to_bytes() == before


def test_check_without_state_does_nothing():
    fx = run(None, [CHECK("queued")], T0 + 86400 * S)
    assert fx.state is None and fx.alerts == [] and not fx.write and not fx.delete and not fx.schedule


def test_same_check_twice_in_one_step_alerts_once():
    st = stored([("outbound-sms", T0)])
    fx = run(st, [CHECK("queued"), CHECK("queued")], T0 + 200 * S)
    assert [a["type"] for a in fx.alerts] == ["stuck"]
    assert fx.open_alert is fx.alerts[0]


def test_same_check_in_a_later_step_alerts_once_across_restarts():
    st = stored([("outbound-sms", T0)])
    fx1 = run(rt(st), [CHECK("queued")], T0 + 200 * S)
    assert len(fx1.alerts) == 1 and fx1.write
    raw = fx1.state.to_bytes()
    for now in (T0 + 201 * S, T0 + 86400 * S):  # restarts: the state comes back from its bytes
        fx = run(MessageState.from_bytes(raw), [CHECK("queued")], now)
        assert fx.alerts == [] and not fx.write and not fx.schedule
        assert fx.state.to_bytes() == raw
        assert open_or_unknown(fx, "queued")
    # nor does a new, non-advancing event re-arm that stage's deadline
    fx = run(MessageState.from_bytes(raw), [E(("outbound-sms", T0 + 5 * S))], T0 + 300 * S)
    assert fx.alerts == [] and fx.schedule and fx.deadline is None and fx.write
    assert fx.state.alerted == stuck_bit(0)
    fx2 = run(rt(fx.state), [CHECK("queued")], T0 + 400 * S)
    assert fx2.alerts == []


def test_check_without_stuck_bit_in_stored_state_is_the_only_source_of_truth():
    """A state written before the alert (no mark) alerts again: the mark is the record (SPEC §6 relies
    on it reaching the changelog, or on ``published`` after a takeover, tested below)."""
    st = stored([("outbound-sms", T0)])
    raw = st.to_bytes()
    a1 = run(MessageState.from_bytes(raw), [CHECK("queued")], T0 + 200 * S).alerts
    a2 = run(MessageState.from_bytes(raw), [CHECK("queued")], T0 + 200 * S).alerts
    assert a1 == a2 and len(a1) == 1


# ---- SLA overrides ---------------------------------------------------------------------------------------------
# slas, key, events, stage, expected sla seconds
@pytest.mark.parametrize("slas,key,events,stage,sla", [
    (SlaTable(default={"sms": {"queued": 30}}), AS_KEY, [("outbound-sms", T0)], "queued", 30),
    (SlaTable(default={"sms": {"queued": 30}}), AS_KEY, [("outbound-email", T0)], "queued", 300),
    (SlaTable(default={"email": {"sent": 1800}}), AS_KEY,
     [("outbound-email", T0), ("message-sent", T0 + S)], "sent", 1800),
    (SlaTable(tenant={"acme": {"email": {"queued": 10}}}), AS_KEY, [("outbound-email", T0)], "queued", 10),
    (SlaTable(tenant={"other": {"email": {"queued": 10}}}), AS_KEY, [("outbound-email", T0)], "queued", 300),
    (SlaTable(default={"email": {"sent": 1800}}, tenant={"acme": {"email": {"queued": 10}}}), AS_KEY,
     [("outbound-email", T0), ("message-sent", T0 + S)], "sent", 1800),
    (SlaTable(default={"sms": {"queued": 30}}, tenant={"acme": {"sms": {"queued": 15}}}), AS_KEY,
     [("outbound-sms", T0)], "queued", 15),
    (SlaTable(default={"unknown": {"sent": 77}}), AS_KEY, [("message-sent", T0)], "sent", 77),
    (SlaTable(tenant={"23": {"push": {"sent": 45}}}), AC_KEY, [("send_push", T0)], "sent", 45),
    (SlaTable(tenant={"23": {"push": {"sent": 45}}}), AC_KEY, [("send_sms", T0)], "sent", 900),
    (SlaTable(tenant={"acme": {"telegram": {"sent": 45}}}), AC_KEY, [("telegram_bot_send", T0)], "sent", 900),
    (SlaTable(default={"sms": {"queued": 1.5}}), AS_KEY, [("outbound-sms", T0)], "queued", 1.5),
])
def test_per_channel_and_per_tenant_slas(slas, key, events, stage, sla):
    cfg = StepConfig(W, RET, slas)
    fx0 = run(None, [E(*events)], T0 + 2 * S, key=key, cfg=cfg)
    since = summarize(source_of(key), fx0.state.events).reached[STAGE_RANK[stage]]
    dl = since + int(sla * S)
    assert fx0.deadline == Deadline(stage, since, dl, sla)
    st = rt(fx0.state)
    assert run(st, [CHECK(stage)], dl, key=key, cfg=cfg).alerts == []
    fx = run(st, [CHECK(stage)], dl + 1, key=key, cfg=cfg)
    assert len(fx.alerts) == 1
    assert fx.alerts[0]["sla_seconds"] == sla
    assert fx.alerts[0]["deadline"] == format_ts_us(dl)
    assert fx.alerts[0]["since"] == format_ts_us(since)


# ---- stuck -> resolved ---------------------------------------------------------------------------------------
# key, events, stuck stage, advancing/failing event, resolved_stage, resolved_at
RESOLVE_CASES = [
    (AS_KEY, [("outbound-email", T0)], "queued", ("message-sent", T0 + 400 * S), "sent", T0 + 400 * S),
    (AS_KEY, [("outbound-email", T0)], "queued", ("message-delivered", T0 + 500 * S), "delivered", T0 + 500 * S),
    (AS_KEY, [("outbound-email", T0)], "queued", ("message-link-clicked", T0 + 600 * S), "clicked",
     T0 + 600 * S),
    (AS_KEY, [("outbound-email", T0)], "queued", ("message-failed", T0 + 350 * S), "failed", T0 + 350 * S),
    (AS_KEY, [("outbound-sms", T0), ("message-sent", T0 + S)], "sent", ("message-delivered", T0 + 1000 * S),
     "delivered", T0 + 1000 * S),
    (AS_KEY, [("outbound-sms", T0), ("message-sent", T0 + S)], "sent", ("message-failed", T0 + 950 * S),
     "failed", T0 + 950 * S),
    (AS_KEY, [("outbound-sms", T0), ("message-sent", T0 + S)], "sent", ("message-opened", T0 + 999 * S),
     "opened", T0 + 999 * S),
    (AC_KEY, [("send", T0)], "sent", ("deliv", T0 + 4000 * S), "delivered", T0 + 4000 * S),
    (AC_KEY, [("send_sms", T0)], "sent", ("undeliv_sms", T0 + 1000 * S), "failed", T0 + 1000 * S),
    (AC_KEY, [("send", T0)], "sent", ("hbounce", T0 + 3700 * S), "failed", T0 + 3700 * S),
    (AC_KEY, [("send", T0)], "sent", ("suppress", T0 + 3700 * S), "failed", T0 + 3700 * S),
    (AC_KEY, [("send_push", T0)], "sent", ("click_push", T0 + 1000 * S), "clicked", T0 + 1000 * S),
    (AC_KEY, [("telegram_bot_send", T0)], "sent", ("telegram_bot_deliv", T0 + 1000 * S), "delivered",
     T0 + 1000 * S),
]


@pytest.mark.parametrize("key,events,stage,advance,resolved_stage,resolved_at", RESOLVE_CASES)
def test_stuck_then_resolved(key, events, stage, advance, resolved_stage, resolved_at):
    source, tenant, mid = key.split("|")
    fx1, d = stuck_now(events, stage, key=key)
    stuck = fx1.alerts[0]
    st = rt(fx1.state)
    now = resolved_at + 5 * S
    fx = run(st, [E(advance)], now, key=key)
    assert len(fx.alerts) == 1
    r = fx.alerts[0]
    assert r["type"] == "resolved"
    assert {k: r[k] for k in ("source", "tenant", "channel", "message_id", "stage", "since")} == \
        {k: stuck[k] for k in ("source", "tenant", "channel", "message_id", "stage", "since")}
    assert (r["source"], r["tenant"], r["message_id"], r["stage"]) == (source, tenant, mid, stage)
    assert r["resolved_stage"] == resolved_stage
    assert r["resolved_at"] == format_ts_us(resolved_at)
    assert r["time_to_resolve_s"] == (resolved_at - d.since_us) / S
    assert fx.settled_stages == [stage]
    assert fx.open_known and fx.open_alert is None
    assert fx.write and fx.state.alerted & resolved_bit(STAGE_RANK[stage])
    # a second advancing event: no second resolved alert, nothing settled again
    fx2 = run(rt(fx.state), [E(("message-link-clicked" if key == AS_KEY else "uclick", now + S))], now + 2 * S,
              key=key)
    assert fx2.alerts == [] and fx2.settled_stages == []
    # and the resolved stage's check never alerts again
    assert run(rt(fx2.state), [CHECK(stage)], now + 86400 * S, key=key).alerts == []


def test_failure_then_delivery_resolves_once():
    fx1, _ = stuck_now([("outbound-email", T0)], "queued")
    fx = run(rt(fx1.state), [E(("message-failed", T0 + 400 * S), ("message-delivered", T0 + 500 * S))],
             T0 + 600 * S)
    assert [a["type"] for a in fx.alerts] == ["resolved"]
    assert fx.alerts[0]["resolved_stage"] == "failed"
    assert fx.conflicts == 1
    fx2 = run(rt(fx1.state), [E(("message-failed", T0 + 400 * S))], T0 + 600 * S)
    fx3 = run(rt(fx2.state), [E(("message-delivered", T0 + 500 * S))], T0 + 700 * S)
    assert [a["type"] for a in fx2.alerts] == ["resolved"] and fx3.alerts == []


def test_not_stuck_message_advancing_or_failing_resolves_nothing():
    st = stored([("outbound-email", T0)])
    for ev in (("message-sent", T0 + S), ("message-failed", T0 + S), ("message-delivered", T0 + S)):
        fx = run(rt(st), [E(ev)], T0 + 2 * S)
        assert fx.alerts == [] and fx.settled_stages == []
        assert fx.open_known and fx.open_alert is None


def test_non_advancing_event_keeps_the_stuck_alert_open():
    fx1, _ = stuck_now([("outbound-email", T0)], "queued")
    fx = run(rt(fx1.state), [E(("outbound-email", T0 + 10 * S))], T0 + 400 * S)
    assert fx.alerts == [] and fx.settled_stages == []
    assert fx.open_known and fx.open_alert is not None
    assert fx.open_alert["stage"] == "queued" and fx.open_alert["type"] == "stuck"
    assert fx.open_alert["detected_at"] is None  # not known in this step (the book keeps its row)


def test_check_then_advance_in_one_step():
    st = stored([("outbound-email", T0)])
    fx = run(st, [CHECK("queued"), E(("message-sent", T0 + 400 * S))], T0 + 401 * S)
    assert [a["type"] for a in fx.alerts] == ["stuck", "resolved"]
    assert fx.settled_stages == ["queued"]
    assert fx.state.alerted == stuck_bit(0) | resolved_bit(0)
    assert fx.open_known and fx.open_alert is None
    # the next stage's deadline is armed
    assert fx.schedule and fx.deadline == Deadline("sent", T0 + 400 * S, T0 + 4000 * S, 3600)


def test_advance_then_check_in_one_step_alerts_nothing():
    st = stored([("outbound-email", T0)])
    fx = run(st, [E(("message-sent", T0 + 400 * S)), CHECK("queued")], T0 + 401 * S)
    assert fx.alerts == [] and fx.state.alerted == 0


def test_full_path_two_stuck_two_resolved():
    key = AS_KEY
    alerts: list = []
    st = None
    for ops, now in [
        ([E(("outbound-sms", T0))], T0),
        ([CHECK("queued")], T0 + 121 * S),
        ([E(("message-sent", T0 + 130 * S))], T0 + 130 * S),
        ([CHECK("sent")], T0 + 1031 * S),
        ([CHECK("sent")], T0 + 1032 * S),
        ([E(("message-delivered", T0 + 1100 * S))], T0 + 1100 * S),
        ([E(("message-link-clicked", T0 + 1200 * S))], T0 + 1200 * S),
        ([CHECK("queued"), CHECK("sent")], T0 + 86400 * S),
    ]:
        fx = run(rt(st), ops, now, key=key)
        alerts += fx.alerts
        if fx.write:
            st = fx.state
    assert [(a["type"], a["stage"]) for a in alerts] == [
        ("stuck", "queued"), ("resolved", "queued"), ("stuck", "sent"), ("resolved", "sent")]
    assert alerts[1]["resolved_stage"] == "sent" and alerts[3]["resolved_stage"] == "delivered"
    assert alerts[3]["time_to_resolve_s"] == 970.0
    assert st.alerted == stuck_bit(0) | stuck_bit(1) | resolved_bit(0) | resolved_bit(1)


# ---- deadlines --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("events,expected", [
    ([("outbound-email", T0)], Deadline("queued", T0, T0 + 300 * S, 300)),
    ([("outbound-sms", T0)], Deadline("queued", T0, T0 + 120 * S, 120)),
    ([("outbound-sms", T0), ("message-sent", T0 + S)], Deadline("sent", T0 + S, T0 + 901 * S, 900)),
    ([("message-sent", T0)], Deadline("sent", T0, T0 + 3600 * S, 3600)),
    ([("outbound-sms", T0), ("message-delivered", T0 + S)], None),
    ([("message-delivered", T0)], None),
    ([("outbound-email", T0), ("message-failed", T0 + S)], None),
    ([("message-failed", T0)], None),
    ([("message-opened", T0)], None),
    ([("message-link-clicked", T0)], None),
    ([("outbound-email", T0), ("message-delivered", T0 + S), ("message-failed", T0 + 2 * S)], None),
])
def test_deadline_after_events(events, expected):
    fx = run(None, [E(*events)], T0 + 10 * S)
    assert fx.schedule and fx.deadline == expected
    assert fx.expiry_us == T0 + 10 * S + RET
    # one event per step: the last step decides
    st = None
    for ev in events:
        fx = run(rt(st), [E(ev)], T0 + 10 * S)
        st = fx.state
    assert fx.schedule and fx.deadline == expected


@pytest.mark.parametrize("key,ev", [(AC_KEY, ("sbounce", T0)), (AC_KEY, ("deliv", T0)),
                                    (AC_KEY, ("undeliv", T0)), (AC_KEY, ("uopen", T0))])
def test_no_deadline_for_altcraft_outcomes_and_annotations(key, ev):
    fx = run(None, [E(ev)], T0, key=key)
    assert fx.schedule and fx.deadline is None and fx.write


def test_delivery_cancels_a_scheduled_deadline():
    st = stored([("outbound-email", T0)])
    fx = run(st, [E(("message-delivered", T0 + 5 * S))], T0 + 5 * S)
    assert fx.schedule and fx.deadline is None and fx.alerts == []


def test_duplicate_only_step_touches_nothing():
    st = stored([("outbound-email", T0)], now=T0)
    before = st.to_bytes()
    fx = run(st, [E(("outbound-email", T0))], T0 + 99 * S)
    assert fx.duplicates == 1 and not fx.write and not fx.schedule and fx.expiry_us is None
    assert fx.delta == [] and closed_or_unknown(fx) and st.to_bytes() == before


# ---- suppression (agents-side) relies on settled_stages ---------------------------------------------------------
def test_settled_stages_clear_the_agent_suppression():
    """agents/lifecycle.py discards (key, stage) from the book's suppressed set for each settled stage."""
    key = AS_KEY.encode()
    suppressed = {(key, "queued"), (key, "sent")}

    def agent(fx: Effects) -> None:  # what Lifecycle._step does with them
        for stage in fx.settled_stages:
            suppressed.discard((key, stage))

    fx1, _ = stuck_now([("outbound-email", T0)], "queued")
    agent(fx1)
    assert suppressed == {(key, "queued"), (key, "sent")}
    fx2 = run(rt(fx1.state), [E(("message-sent", T0 + 400 * S))], T0 + 400 * S)
    agent(fx2)
    assert fx2.settled_stages == ["queued"]
    assert suppressed == {(key, "sent")}
    fx3 = run(rt(fx2.state), [EXPIRE], T0 + 400 * S + RET + 1)
    agent(fx3)
    assert fx3.delete and set(fx3.settled_stages) == {"queued", "sent"}
    assert suppressed == set()


# ---- published marks (taken back from the alerts topic) ----------------------------------------------------------
def published_stuck(events, stage, detected_us, *, key=AS_KEY):
    source, tenant, mid = key.split("|")
    s = summarize(source, stored(events, key=key).events)
    d = deadline(s, tenant, CFG.slas)
    assert d is not None and d.stage == stage
    return stuck_alert(source, tenant, mid, s, d, detected_us)


def test_published_stuck_merged_into_existing_state():
    events = [("outbound-email", T0)]
    alert = published_stuck(events, "queued", T0 + 305 * S)
    st = stored(events)
    fx = run(st, [E(("outbound-email", T0))], T0 + 400 * S, published={stuck_bit(0): alert})
    assert fx.write and fx.published_used and fx.reconciled == ["stuck"]
    assert fx.state.alerted == stuck_bit(0)
    assert fx.alerts == []
    assert fx.open_known and fx.open_alert == alert
    assert fx.open_alert["detected_at"] == format_ts_us(T0 + 305 * S)
    # a later check (after a restart) raises no repeat stuck alert
    fx2 = run(rt(fx.state), [CHECK("queued")], T0 + 86400 * S)
    assert fx2.alerts == [] and not fx2.write and open_or_unknown(fx2, "queued")


def test_published_stuck_merged_with_a_check_in_the_same_step():
    events = [("outbound-sms", T0)]
    alert = published_stuck(events, "queued", T0 + 125 * S)
    fx = run(stored(events), [CHECK("queued")], T0 + 130 * S, published={stuck_bit(0): alert})
    assert fx.alerts == [] and fx.write and fx.reconciled == ["stuck"]
    assert fx.open_alert == alert and fx.open_alert["detected_at"] == format_ts_us(T0 + 125 * S)


def test_published_merged_into_state_created_by_the_first_event():
    events = [("outbound-email", T0)]
    alert = published_stuck(events, "queued", T0 + 305 * S)
    fx = run(None, [E(*events)], T0 + 310 * S, published={stuck_bit(0): alert})
    assert fx.created == 1 and fx.write and fx.published_used and fx.reconciled == ["stuck"]
    assert fx.state.alerted == stuck_bit(0)
    assert fx.alerts == []
    assert fx.schedule and fx.deadline is None  # that stage was alerted already
    assert fx.open_known and fx.open_alert == alert
    fx2 = run(rt(fx.state), [CHECK("queued")], T0 + 86400 * S)
    assert fx2.alerts == []
    # and advancing resolves it, once
    fx3 = run(rt(fx.state), [E(("message-sent", T0 + 400 * S))], T0 + 400 * S)
    assert [a["type"] for a in fx3.alerts] == ["resolved"] and fx3.settled_stages == ["queued"]


def test_published_without_state_and_without_event_is_kept():
    alert = published_stuck([("outbound-email", T0)], "queued", T0 + 305 * S)
    fx = run(None, [CHECK("queued"), EXPIRE], T0 + 310 * S, published={stuck_bit(0): alert})
    assert fx.state is None and not fx.published_used and fx.reconciled == [] and not fx.write


def test_published_already_marked_means_no_write():
    events = [("outbound-email", T0)]
    alert = published_stuck(events, "queued", T0 + 305 * S)
    st = stored(events)
    st.alerted = stuck_bit(0)
    st = rt(st)
    before = st.to_bytes()
    fx = run(st, [CHECK("queued")], T0 + 400 * S, published={stuck_bit(0): alert})
    assert fx.published_used and not fx.write and fx.reconciled == [] and fx.alerts == []
    assert st.to_bytes() == before
    assert fx.open_known and fx.open_alert == alert


def test_published_stuck_and_resolved_marks_merge_without_new_alerts():
    events = [("outbound-email", T0), ("message-sent", T0 + 400 * S)]
    stuck = published_stuck([("outbound-email", T0)], "queued", T0 + 305 * S)
    resolved = {"type": "resolved", "source": "activity_sync", "tenant": "acme", "channel": "email",
                "message_id": "m1", "stage": "queued", "since": format_ts_us(T0), "resolved_stage": "sent",
                "resolved_at": format_ts_us(T0 + 400 * S), "time_to_resolve_s": 400.0,
                "detected_at": format_ts_us(T0 + 401 * S)}
    published = {stuck_bit(0): stuck, resolved_bit(0): resolved}
    fx = run(stored(events), [E(("message-delivered", T0 + 500 * S))], T0 + 500 * S, published=published)
    assert sorted(fx.reconciled) == ["resolved", "stuck"] and fx.write and fx.published_used
    assert fx.alerts == [] and fx.settled_stages == []
    assert fx.state.alerted == stuck_bit(0) | resolved_bit(0)
    assert fx.open_known and fx.open_alert is None


def test_published_stuck_of_a_stage_left_resolves_on_the_next_advance():
    """The stuck alert went out but neither mark landed: the next advancing event resolves it."""
    stuck = published_stuck([("outbound-email", T0)], "queued", T0 + 305 * S)
    fx = run(stored([("outbound-email", T0)]), [E(("message-sent", T0 + 400 * S))], T0 + 400 * S,
             published={stuck_bit(0): stuck})
    assert [a["type"] for a in fx.alerts] == ["resolved"] and fx.reconciled == ["stuck"]
    assert fx.open_alert is None and fx.settled_stages == ["queued"]


# ---- expiry (OP_EXPIRE) -------------------------------------------------------------------------------------------
def test_expire_not_past_retention_rearms():
    st = stored([("outbound-email", T0), ("message-delivered", T0 + S)], now=T0 + 10 * S)
    before = st.to_bytes()
    for now in (T0 + 10 * S + RET, T0 + 10 * S + RET - 1, T0 + 10 * S):  # not strictly after
        fx = run(st, [EXPIRE], now)
        assert fx.expiry_us == T0 + 10 * S + RET
        assert fx.state is st and not fx.delete and not fx.write and fx.delta == []
        assert fx.inflight_delta == 0 and not fx.schedule and closed_or_unknown(fx)
        assert st.to_bytes() == before


@pytest.mark.parametrize("key,events", [
    (AS_KEY, [("outbound-email", T0), ("message-delivered", T0 + S), ("message-opened", T0 + 2 * S),
              ("message-opened", T0 + 3 * S)]),
    (AS_KEY, [("outbound-sms", T0)]),
    (AS_KEY, [("message-failed", T0)]),
    (AC_KEY, [("send", T0), ("sbounce", T0 + S), ("click", T0 + 2 * S)]),
])
def test_expire_past_retention_deletes(key, events):
    touched = T0 + 10 * S
    st = stored(events, now=touched, key=key)
    s = summarize(source_of(key), st.events)
    fx = run(st, [EXPIRE], touched + RET + 1, key=key)
    assert fx.delete and fx.state is None and not fx.write
    assert fx.retired == [(s.channel, s.vector())]
    row = (s.window_start_us(W), key.split("|")[1], s.channel, None)
    assert summed(fx.delta + [(row, s.vector())]) == {}
    assert fx.inflight_delta == -1 and fx.created == 0
    assert fx.schedule and fx.deadline is None and fx.expiry_us is None
    assert fx.open_known and fx.open_alert is None
    assert fx.alerts == []


def test_expire_a_stuck_message_settles_its_stages_and_closes_the_alert():
    fx1, _ = stuck_now([("outbound-email", T0)], "queued")
    fx = run(rt(fx1.state), [EXPIRE], T0 + RET + 86400 * S)
    assert fx.delete and fx.alerts == [] and set(fx.settled_stages) == {"queued", "sent"}
    assert fx.open_known and fx.open_alert is None


def test_expire_then_new_event_in_the_same_step_recreates():
    events = [("outbound-email", T0), ("message-delivered", T0 + S)]
    st = stored(events, now=T0 + S)
    old = summarize("activity_sync", st.events)
    now = T0 + S + RET + 1
    fx = run(st, [EXPIRE, E(("outbound-sms", now - 5 * S))], now)
    assert fx.state is not None and fx.write and not fx.delete
    assert fx.state.events == [(now - 5 * S, code("outbound-sms"))]
    assert fx.inflight_delta == 0 and fx.created == 1
    assert fx.retired == [(old.channel, old.vector())]
    new = summarize("activity_sync", fx.state.events)
    expected = {(old.window_start_us(W), "acme", "email", None): tuple(-x for x in old.vector())}
    new_row = (new.window_start_us(W), "acme", "sms", None)
    expected[new_row] = new.vector()
    assert summed(fx.delta) == expected
    assert fx.schedule and fx.deadline == Deadline("queued", now - 5 * S, now + 115 * S, 120)
    assert fx.expiry_us == now + RET
    assert fx.open_known and fx.open_alert is None


def test_event_then_expire_in_the_same_step_keeps_the_state():
    st = stored([("outbound-email", T0)], now=T0)
    now = T0 + RET + 100 * S
    fx = run(st, [E(("message-delivered", T0 + S)), EXPIRE], now)
    assert fx.state is not None and fx.write and not fx.delete
    assert fx.expiry_us == now + RET and fx.inflight_delta == 0


def test_expire_without_state_does_nothing():
    fx = run(None, [EXPIRE], T0 + RET * 2)
    assert fx.state is None and not fx.delete and not fx.write and fx.inflight_delta == 0 and not fx.schedule


def test_unknown_op_raises():
    with pytest.raises(ValueError):
        run(None, [(9,)], T0)


# ---- facts ----------------------------------------------------------------------------------------------------
def _facts(steps, key=AS_KEY):
    """Run ``steps`` [(ops, now)] from no state; totals of the counted facts."""
    st = None
    tot = {"duplicates": 0, "out_of_order": 0, "late": 0, "conflicts": 0, "latencies": []}
    for ops, now in steps:
        fx = run(rt(st), ops, now, key=key)
        for k in ("duplicates", "out_of_order", "late", "conflicts"):
            tot[k] += getattr(fx, k)
        tot["latencies"] += fx.latencies
        if fx.write:
            st = fx.state
    return tot


N = T0 + 10 * S  # "now" of the facts table, close to the events
FACT_CASES = [
    # duplicates: the same event twice, in one op, in two ops, in two steps
    ("dup one op", [([E(("outbound-sms", T0), ("outbound-sms", T0))], N)], {"duplicates": 1}),
    ("dup two ops", [([E(("outbound-sms", T0)), E(("outbound-sms", T0))], N)], {"duplicates": 1}),
    ("dup two steps", [([E(("outbound-sms", T0))], N), ([E(("outbound-sms", T0))], N)], {"duplicates": 1}),
    ("dup three times", [([E(("message-sent", T0))] * 3, N)], {"duplicates": 2}),
    ("not dup: other ts", [([E(("outbound-sms", T0), ("outbound-sms", T0 + 1))], N)], {}),
    ("not dup: other kind", [([E(("message-sent", T0), ("message-delivered", T0))], N)], {}),
    # out of order: older than an event already applied
    ("ooo", [([E(("outbound-sms", T0), ("message-delivered", T0 + 9 * S), ("message-sent", T0 + 5 * S))], N)],
     {"out_of_order": 1}),
    ("ooo two steps", [([E(("outbound-sms", T0), ("message-delivered", T0 + 9 * S))], N),
                       ([E(("message-sent", T0 + 5 * S))], N)], {"out_of_order": 1}),
    ("in order", [([E(("outbound-sms", T0), ("message-sent", T0 + 5 * S))], N)], {}),
    # late: older than now - window (strictly), or moving the message's row
    ("late", [([E(("outbound-email", N - W - 1))], N)], {"late": 1}),
    ("at the window edge", [([E(("outbound-email", N - W))], N)], {}),
    ("late and moved", [([E(("message-sent", T0))], N), ([E(("outbound-email", T0 - W))], N)],
     {"late": 1, "out_of_order": 1}),
    # conflicting outcomes: delivery evidence and a failure, counted once
    ("conflict", [([E(("message-delivered", T0), ("message-failed", T0 + S))], N)], {"conflicts": 1}),
    ("conflict reversed", [([E(("message-failed", T0 + S)), E(("message-delivered", T0 + 2 * S))], N)],
     {"conflicts": 1}),
    ("conflict once", [([E(("message-delivered", T0 + 2 * S))], N), ([E(("message-failed", T0 + 3 * S))], N),
                       ([E(("message-failed", T0 + 4 * S))], N)], {"conflicts": 1}),
    ("failed only", [([E(("outbound-sms", T0), ("message-failed", T0 + S))], N)], {}),
]


@pytest.mark.parametrize("name,steps,expected", FACT_CASES, ids=[c[0] for c in FACT_CASES])
def test_facts(name, steps, expected):
    tot = _facts(steps)
    for k in ("duplicates", "out_of_order", "late", "conflicts"):
        assert tot[k] == expected.get(k, 0), k


@pytest.mark.parametrize("key,steps,expected", [
    (AS_KEY, [([E(("outbound-email", T0), ("message-sent", T0 + 5 * S), ("message-delivered", T0 + 65 * S),
                 ("message-opened", T0 + 100 * S), ("message-link-clicked", T0 + 130 * S))], N)],
     [("email", "queued", "sent", 5.0), ("email", "sent", "delivered", 60.0),
      ("email", "delivered", "opened", 35.0), ("email", "delivered", "clicked", 65.0)]),
    # one stage per step: observed when the stage is first reached
    (AS_KEY, [([E(("outbound-sms", T0))], N), ([E(("message-sent", T0 + 2 * S))], N),
              ([E(("message-delivered", T0 + 2 * S + 250_000))], N)],
     [("sms", "queued", "sent", 2.0), ("sms", "sent", "delivered", 0.25)]),
    # sms: a click does not imply opened
    (AS_KEY, [([E(("outbound-sms", T0), ("message-sent", T0 + S), ("message-delivered", T0 + 3 * S))], N),
              ([E(("message-link-clicked", T0 + 13 * S))], N)],
     [("sms", "queued", "sent", 1.0), ("sms", "sent", "delivered", 2.0), ("sms", "delivered", "clicked", 10.0)]),
    (AC_KEY, [([E(("send", T0))], N), ([E(("deliv", T0 + 30 * S))], N), ([E(("open", T0 + 90 * S))], N)],
     [("email", "sent", "delivered", 30.0), ("email", "delivered", "opened", 60.0)]),
    # a stage reached again (duplicate or later evidence) is not observed twice
    (AS_KEY, [([E(("outbound-sms", T0), ("message-sent", T0 + S))], N), ([E(("message-sent", T0 + 9 * S))], N)],
     [("sms", "queued", "sent", 1.0)]),
    # the channel shows only later (delivery evidence first, in its own step): observed then,
    # under the message's channel, as when the events arrive in order
    (AS_KEY, [([E(("message-delivered", T0 + 3 * S))], N), ([E(("outbound-sms", T0))], N)],
     [("sms", "queued", "sent", 3.0), ("sms", "sent", "delivered", 0.0)]),
    (AS_KEY, [([E(("outbound-sms", T0), ("message-delivered", T0 + 3 * S))], N)],
     [("sms", "queued", "sent", 3.0), ("sms", "sent", "delivered", 0.0)]),
    (AS_KEY, [([E(("message-delivered", T0 + 3 * S), ("outbound-sms", T0))], N)],
     [("sms", "queued", "sent", 3.0), ("sms", "sent", "delivered", 0.0)]),
    # a channel that never shows: nothing observed under "unknown"
    (AS_KEY, [([E(("message-sent", T0 + S))], N), ([E(("message-delivered", T0 + 3 * S))], N)], []),
])
def test_latencies(key, steps, expected):
    assert _facts(steps, key)["latencies"] == expected


# ---- order independence (SPEC §5) -----------------------------------------------------------------------------
POOLS = {
    AS_KEY: [("outbound-email", T0), ("outbound-sms", T0 + 3 * S), ("message-sent", T0 + 5 * S),
             ("message-sent", T0 - W), ("message-delivered", T0 + 9 * S), ("message-opened", T0 + 20 * S),
             ("message-opened", T0 + 21 * S), ("message-link-clicked", T0 + 30 * S), ("message-failed", T0 + 7 * S)],
    AC_KEY: [("send", T0), ("send_sms", T0 - 2 * S), ("deliv", T0 + 4 * S), ("undeliv", T0 + 3 * S),
             ("sbounce", T0 + S), ("open", T0 + 8 * S), ("open", T0 + 9 * S), ("uclick", T0 + 10 * S),
             ("unsub", T0 + 11 * S), ("complain", T0 - W - 1)],
}
NOW_OI = T0 + 60 * S
# SLAs long enough that the checks put between the steps are never due (a check that alerts
# depends on when it runs, by design); they must not change the outcome either.
CFG_OI = StepConfig(W, RET, SlaTable(default={ch: {"queued": 10**6, "sent": 10**6} for ch in SPEC_SLA}))


def _apply_steps(key, chunks, with_checks):
    st = None
    delta: list = []
    tot = {"duplicates": 0, "conflicts": 0, "created": 0, "inflight": 0}
    for chunk in chunks:
        ops = [E(*chunk)] if chunk else []
        if with_checks:
            ops = [CHECK("queued"), *ops, CHECK("sent"), EXPIRE]
        fx = run(rt(st), ops, NOW_OI, key=key, cfg=CFG_OI)
        assert fx.alerts == [] and not fx.delete
        delta += fx.delta
        tot["duplicates"] += fx.duplicates
        tot["conflicts"] += fx.conflicts
        tot["created"] += fx.created
        tot["inflight"] += fx.inflight_delta
        if fx.write:
            st = fx.state
    return st.to_bytes(), summed(delta), tot


@st.composite
def event_runs(draw):
    key = draw(st.sampled_from(sorted(POOLS)))
    pool = POOLS[key]
    idx = draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=10))  # repeats: duplicates
    events = [pool[i] for i in idx]
    perm = draw(st.permutations(events))
    cuts = sorted(draw(st.lists(st.integers(0, len(perm)), max_size=4)))
    bounds = [0, *cuts, len(perm)]
    chunks = [perm[a:b] for a, b in zip(bounds, bounds[1:])]
    return key, events, chunks, draw(st.booleans())


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_runs())
def test_order_and_batching_do_not_matter(run_):
    key, events, chunks, with_checks = run_
    ref_bytes, ref_delta, ref_tot = _apply_steps(key, [events], False)
    got_bytes, got_delta, got_tot = _apply_steps(key, chunks, with_checks)
    assert got_bytes == ref_bytes
    assert got_delta == ref_delta
    assert got_tot == ref_tot
    assert ref_tot["duplicates"] == len(events) - len(set(events))
    assert ref_tot["created"] == 1 and ref_tot["inflight"] == 1
    # the summed delta is the message's contribution, in its row
    s = summarize(source_of(key), MessageState.from_bytes(ref_bytes).events)
    assert ref_delta == {(s.window_start_us(W), key.split("|")[1], s.channel, None): s.vector()}


def test_order_independence_exhaustive_small():
    """All orders of a conflicting 4-event message, each split at random into steps."""
    import itertools
    rng = random.Random(7)
    events = [("outbound-sms", T0 + S), ("message-sent", T0), ("message-failed", T0 + 4 * S),
              ("message-delivered", T0 + 2 * S)]
    ref = _apply_steps(AS_KEY, [events], False)
    for perm in itertools.permutations(events):
        cuts = sorted(rng.sample(range(5), rng.randint(0, 3)))
        bounds = [0, *cuts, 4]
        chunks = [list(perm[a:b]) for a, b in zip(bounds, bounds[1:])]
        assert _apply_steps(AS_KEY, chunks, True) == ref
