"""Stuck messages (SPEC §6): SLA table and overrides, deadline rules, and the DeadlineIndex."""
from __future__ import annotations

import random

import pytest

from streams.errors import ConfigError
from streams.events import CanonicalEvent
from streams.kinds import AC_LIFECYCLE, AS_LIFECYCLE
from streams.lifecycle import MessageState, summarize
from streams.stuck import DEFAULT_SLA_S, Deadline, DeadlineIndex, SlaTable, deadline, is_stuck

S = 1_000_000
T0 = 1724763600 * S

# SPEC §6 table, transcribed: channel -> (queued -> sent, sent -> delivered)
SPEC_SLA = {"sms": (120, 900), "email": (300, 3600), "push": (120, 900), "telegram": (120, 900),
            "unknown": (300, 3600)}


from tests.streams_helpers import ev, summary_of  # noqa: E402


# ---- SLA table -------------------------------------------------------------------------------------
@pytest.mark.parametrize("channel", sorted(SPEC_SLA))
def test_sla_defaults(channel):
    t = SlaTable()
    q, s = SPEC_SLA[channel]
    for tenant in ("foo", "23", "anything"):
        assert t.sla_s(tenant, channel, "queued") == q
        assert t.sla_s(tenant, channel, "sent") == s
    assert DEFAULT_SLA_S[channel] == {"queued": q, "sent": s}


def test_per_channel_override_keeps_the_other_defaults():
    t = SlaTable(default={"sms": {"sent": 60}})
    assert t.sla_s("x", "sms", "sent") == 60
    assert t.sla_s("x", "sms", "queued") == 120
    assert t.sla_s("x", "email", "sent") == 3600


def test_per_tenant_override_merges_over_channel_overrides():
    t = SlaTable(default={"email": {"sent": 1800}}, tenant={"acme": {"email": {"queued": 10}, "push": {"sent": 30}}})
    assert t.sla_s("acme", "email", "queued") == 10
    assert t.sla_s("acme", "email", "sent") == 1800  # the channel override still applies to acme
    assert t.sla_s("acme", "push", "sent") == 30
    assert t.sla_s("acme", "sms", "sent") == 900
    assert t.sla_s("other", "email", "queued") == 300
    assert t.sla_s("other", "email", "sent") == 1800
    assert t.sla_s("other", "push", "sent") == 900


def test_overrides_do_not_mutate_the_defaults():
    SlaTable(default={"sms": {"sent": 1}}, tenant={"a": {"sms": {"queued": 1}}})
    assert DEFAULT_SLA_S["sms"] == {"queued": 120, "sent": 900}
    assert SlaTable().sla_s("a", "sms", "queued") == 120


@pytest.mark.parametrize("default,tenant", [
    ({"fax": {"sent": 10}}, None),
    ({"sms": {"delivered": 10}}, None),
    ({"sms": {"sent": 0}}, None),
    ({"sms": {"sent": -5}}, None),
    ({"sms": {"sent": "60"}}, None),
    (None, {"acme": {"pigeon": {"sent": 10}}}),
    (None, {"acme": {"sms": {"queued": 0}}}),
])
def test_bad_sla_config_raises(default, tenant):
    with pytest.raises(ConfigError):
        SlaTable(default=default, tenant=tenant)


# ---- deadlines ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("events,channel,stage,since", [
    ([("outbound-sms", T0)], "sms", "queued", T0),
    ([("outbound-email", T0)], "email", "queued", T0),
    ([("outbound-email", T0), ("message-sent", T0 + 300 * S)], "email", "sent", T0 + 300 * S),
    ([("message-sent", T0)], "unknown", "sent", T0),
    ([("send", T0)], "email", "sent", T0),
    ([("send_sms", T0)], "sms", "sent", T0),
    ([("send_push", T0)], "push", "sent", T0),
    ([("telegram_group_send", T0)], "telegram", "sent", T0),
    # stage_reached_at = earliest evidence: two message-sent events, the earlier one counts
    ([("outbound-sms", T0), ("message-sent", T0 + 50 * S), ("message-sent", T0 + 20 * S)], "sms", "sent",
     T0 + 20 * S),
    # annotations do not stop the clock: no outcome
    ([("send", T0), ("sbounce", T0 + S)], "email", "sent", T0),
    ([("send", T0), ("complain", T0 + S), ("unsub", T0 + 2 * S)], "email", "sent", T0),
])
def test_deadline_pending(events, channel, stage, since):
    s = summary_of(*(ev(k, t) for k, t in events))
    d = deadline(s, "t", SlaTable())
    sla = SPEC_SLA[channel][0 if stage == "queued" else 1]
    assert d == Deadline(stage, since, since + sla * S, sla)
    assert s.channel == channel


@pytest.mark.parametrize("events", [
    [("outbound-sms", T0), ("message-delivered", T0 + S)],
    [("message-opened", T0)],
    [("outbound-sms", T0), ("message-failed", T0 + S)],  # outcome failed
    [("message-failed", T0)],
    [("send", T0), ("undeliv", T0 + S)],
    [("send", T0), ("deliv", T0 + S), ("hbounce", T0 + 2 * S)],
    [("sbounce", T0)],  # no stage at all
    [("click_sms", T0)],
])
def test_no_deadline(events):
    s = summary_of(*(ev(k, t) for k, t in events))
    assert deadline(s, "t", SlaTable()) is None
    assert not is_stuck(None, T0 + 10**12)


def test_deadline_uses_tenant_and_channel_override():
    s = summary_of(ev("outbound-sms", T0, tenant="acme"))
    t = SlaTable(tenant={"acme": {"sms": {"queued": 5}}})
    assert deadline(s, "acme", t).deadline_us == T0 + 5 * S
    assert deadline(s, "other", t).deadline_us == T0 + 120 * S


def test_stuck_strictly_after_the_deadline():
    d = deadline(summary_of(ev("outbound-sms", T0)), "t", SlaTable())
    assert not is_stuck(d, d.deadline_us - 1)
    assert not is_stuck(d, d.deadline_us)
    assert is_stuck(d, d.deadline_us + 1)


def test_fractional_sla_seconds():
    d = deadline(summary_of(ev("outbound-sms", T0)), "t", SlaTable(default={"sms": {"queued": 0.5}}))
    assert d.deadline_us == T0 + 500000


def test_advancing_moves_the_deadline_to_the_next_stage():
    q = deadline(summary_of(ev("outbound-email", T0)), "t", SlaTable())
    s = deadline(summary_of(ev("outbound-email", T0), ev("message-sent", T0 + 400 * S)), "t", SlaTable())
    assert (q.stage, q.deadline_us) == ("queued", T0 + 300 * S)
    assert (s.stage, s.since_us, s.deadline_us) == ("sent", T0 + 400 * S, T0 + 4000 * S)


# ---- DeadlineIndex ---------------------------------------------------------------------------------------
def test_index_pop_due_order_and_strictness():
    ix = DeadlineIndex()
    ix.schedule("c", 30, "sent")
    ix.schedule("a", 10, "queued")
    ix.schedule("b", 20, "sent")
    assert len(ix) == 3 and "a" in ix and ix.get("b") == (20, "sent")
    assert ix.next_deadline_us() == 10
    assert ix.pop_due(10) == []  # due means deadline < now (now > deadline)
    assert ix.pop_due(21) == [("a", "queued", 10), ("b", "sent", 20)]
    assert len(ix) == 1 and "a" not in ix
    assert ix.pop_due(10**9) == [("c", "sent", 30)]
    assert ix.pop_due(10**9) == [] and ix.next_deadline_us() is None


def test_index_reschedule_and_cancel_use_lazy_deletion():
    ix = DeadlineIndex()
    ix.schedule("a", 10, "queued")
    ix.schedule("a", 50, "sent")  # rescheduled: the 10 entry is now stale
    ix.schedule("b", 20, "queued")
    ix.cancel("b")
    ix.cancel("missing")  # no error
    assert len(ix._heap) == 3 and len(ix) == 1  # stale entries stay in the heap until popped
    assert ix.next_deadline_us() == 50  # skips (and drops) the stale ones
    assert ix.pop_due(49) == []
    assert ix.pop_due(51) == [("a", "sent", 50)]
    assert ix._heap == []


def test_index_reschedule_back_to_an_earlier_deadline_returns_it_once():
    ix = DeadlineIndex()
    ix.schedule("a", 10, "queued")
    ix.schedule("a", 20, "queued")
    ix.schedule("a", 10, "queued")
    ix.schedule("a", 10, "queued")  # identical: no new heap entry
    assert len(ix._heap) == 3
    assert ix.pop_due(100) == [("a", "queued", 10)]


def test_index_cancel_then_schedule_same_deadline():
    ix = DeadlineIndex()
    ix.schedule("a", 10, "queued")
    ix.cancel("a")
    ix.schedule("a", 10, "queued")
    assert ix.pop_due(100) == [("a", "queued", 10)]


def test_index_limit():
    ix = DeadlineIndex()
    for i in range(10):
        ix.schedule(f"k{i}", i, "sent")
    assert [k for k, _, _ in ix.pop_due(100, limit=3)] == ["k0", "k1", "k2"]
    assert len(ix) == 7


def test_index_same_deadline_ordered_by_key():
    ix = DeadlineIndex()
    for k in ("c", "a", "b"):
        ix.schedule(k, 5, "sent")
    assert [k for k, _, _ in ix.pop_due(6)] == ["a", "b", "c"]


def test_index_compaction_bounds_the_heap():
    ix = DeadlineIndex()
    for i in range(100):
        ix.schedule(f"k{i}", 10**6, "queued")
    for round_ in range(200):  # 20,000 reschedules of 100 live keys
        for i in range(100):
            ix.schedule(f"k{i}", 10**6 + round_ * 1000 + i, "sent")
        assert len(ix._heap) <= 2 * len(ix) + 1024 + 1
    assert len(ix) == 100
    got = ix.pop_due(10**12)
    assert [k for k, _, _ in got] == [f"k{i}" for i in range(100)]
    assert all(d == 10**6 + 199 * 1000 + int(k[1:]) for k, _, d in got)


def test_index_matches_a_naive_model_under_random_operations():
    rng = random.Random(5)
    ix = DeadlineIndex()
    model: dict[str, tuple[int, str]] = {}
    now = 0
    for _ in range(20000):
        op = rng.random()
        key = f"k{rng.randrange(300)}"
        if op < 0.55:
            d, st = now + rng.randrange(0, 5000), rng.choice(("queued", "sent"))
            ix.schedule(key, d, st)
            model[key] = (d, st)
        elif op < 0.7:
            ix.cancel(key)
            model.pop(key, None)
        else:
            now += rng.randrange(0, 400)
            got = ix.pop_due(now)
            want = sorted((d, k, st) for k, (d, st) in model.items() if d < now)
            assert got == [(k, st, d) for d, k, st in want]
            for _, k, _ in want:
                del model[k]
        assert len(ix) == len(model)
    assert dict((k, (d, s)) for k, d, s in ix.items()) == model


class _CountingInt(int):
    """An int that counts how often it is compared: proves pop_due touches few heap entries."""

    count = 0

    def __lt__(self, other):
        _CountingInt.count += 1
        return int.__lt__(self, other)

    def __gt__(self, other):
        _CountingInt.count += 1
        return int.__gt__(self, other)

    def __le__(self, other):
        _CountingInt.count += 1
        return int.__le__(self, other)

    def __ge__(self, other):
        _CountingInt.count += 1
        return int.__ge__(self, other)

    def __eq__(self, other):
        _CountingInt.count += 1
        return int.__eq__(self, other)

    def __ne__(self, other):
        _CountingInt.count += 1
        return int.__ne__(self, other)

    __hash__ = int.__hash__


class _CountingDict(dict):
    gets = 0

    def get(self, key, default=None):
        _CountingDict.gets += 1
        return dict.get(self, key, default)


def test_pop_due_cost_10_due_among_200000_touches_few_entries():
    ix = DeadlineIndex()
    ix._live = _CountingDict()
    rng = random.Random(1)
    n = 200_000
    due = set(rng.sample(range(n), 10))
    for i in range(n):
        d = T0 + (i if i in due else 10**9 + rng.randrange(10**9))
        ix.schedule(f"key-{i}", _CountingInt(d), "sent")
    # some stale entries far in the future too: they must not be touched either
    for i in range(0, n, 100):
        if i not in due:
            ix.schedule(f"key-{i}", _CountingInt(T0 + 3 * 10**9 + i), "sent")
    assert len(ix) == n
    _CountingInt.count = 0
    _CountingDict.gets = 0
    got = ix.pop_due(T0 + 10**6)
    assert sorted(int(k.split("-")[1]) for k, _, _ in got) == sorted(due)
    lookups, comparisons = _CountingDict.gets, _CountingInt.count
    assert lookups == 10  # only the due entries were examined
    # each heappop sifts through ~2*log2(n) ≈ 36 entries; nowhere near n
    print(f"pop_due: {lookups} lookups, {comparisons} comparisons for 10 due of {n}")
    assert comparisons < 1500, comparisons


# ---- alert marks and the reconcile start (table-driven) ------------------------------------------
@pytest.mark.parametrize("alert_type,stage,bit", [
    ("stuck", "queued", 0b1), ("stuck", "sent", 0b10),
    ("resolved", "queued", 0b1_0000), ("resolved", "sent", 0b10_0000),
    ("stuck", "delivered", 0), ("resolved", "failed", 0), ("campaign_error", None, 0),
    ("stuck", None, 0), (None, "queued", 0), ("STUCK", "queued", 0), ("stuck", ["queued"], 0),
    ("stuck", 1, 0),
])
def test_alert_mark(alert_type, stage, bit):
    from streams.stuck import alert_mark

    assert alert_mark(alert_type, stage) == bit


def test_alert_mark_bits_are_the_ones_the_state_keeps():
    from streams.stuck import RESOLVED_SHIFT, resolved_bit, stuck_bit

    bits = [stuck_bit(0), stuck_bit(1), resolved_bit(0), resolved_bit(1)]
    assert len(set(bits)) == 4 and all(b < 256 for b in bits)  # MessageState.alerted is one byte
    assert resolved_bit(1) == stuck_bit(1) << RESOLVED_SHIFT


NOW = T0 + 86400 * S


@pytest.mark.parametrize("last,expected", [
    ({0: NOW - 5 * S}, {0: NOW - 125 * S}),  # last write 5 s ago: back one margin (120 s) from it
    ({0: None}, {0: NOW - 3600 * S}),  # nothing ever landed: the whole lookback
    ({0: NOW - 7200 * S}, {0: NOW - 3600 * S}),  # an old last write is capped by the lookback
    ({0: NOW - 3500 * S}, {0: NOW - 3600 * S}),  # margin crossing the cap: the cap
    ({0: NOW + 60 * S}, {0: NOW - 120 * S}),  # clock skew: a write "in the future" counts as now
    ({0: NOW, 1: None, 2: NOW - 600 * S}, {0: NOW - 120 * S, 1: NOW - 3600 * S, 2: NOW - 720 * S}),
    ({}, {}),
])
def test_reconcile_from(last, expected):
    from streams.stuck import reconcile_from_us

    assert reconcile_from_us(last, now_us=NOW, margin_us=120 * S, max_lookback_us=3600 * S) == expected
