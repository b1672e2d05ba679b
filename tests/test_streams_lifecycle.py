"""Message lifecycle (SPEC §5): implied stages per ladder, outcomes, duplicates, entry window,
moves, funnel deltas, state serialization and expiry."""
from __future__ import annotations

import itertools
import random

import orjson
import pytest

from streams.errors import StateCorrupt
from streams.events import CanonicalEvent
from streams.kinds import AC_LIFECYCLE, AS_LIFECYCLE
from streams.lifecycle import (
    N_FIELDS, VECTOR_FIELDS, MessageState, apply, contribution_delta, expired, summarize,
)
from streams.normalize import normalize

S = 1_000_000
H = 3600 * S
W = H  # default window
T0 = 1724763600 * S  # 2024-08-27T13:00:00Z
STAGE_NAMES = ("queued", "sent", "delivered", "opened", "clicked")


from tests.streams_helpers import ev, summary_of  # noqa: E402


def stages(s) -> set[str]:
    return {STAGE_NAMES[r] for r in s.reached}


def row(s) -> dict:
    return dict(zip(VECTOR_FIELDS, s.vector()))


# ---- implied stages per ladder (SPEC §4/§5) ------------------------------------------------------------
@pytest.mark.parametrize("events,channel,expected", [
    # activity_sync email: the first event is a click -> the whole email ladder
    ([("outbound-email", T0 + 60 * S), ("message-link-clicked", T0)], "email",
     {"queued", "sent", "delivered", "opened", "clicked"}),
    # no outbound yet: channel unknown, full ladder
    ([("message-link-clicked", T0)], "unknown", {"queued", "sent", "delivered", "opened", "clicked"}),
    ([("message-delivered", T0)], "unknown", {"queued", "sent", "delivered"}),
    ([("message-sent", T0)], "unknown", {"queued", "sent"}),
    # sms: clicked does not imply opened
    ([("outbound-sms", T0), ("message-link-clicked", T0 + S)], "sms", {"queued", "sent", "delivered", "clicked"}),
    # sms: an explicit open still counts (and is delivery evidence), nothing implies it
    ([("outbound-sms", T0), ("message-opened", T0 + S)], "sms", {"queued", "sent", "delivered", "opened"}),
    ([("outbound-sms", T0)], "sms", {"queued"}),
    # altcraft emits no `queued`: its ladder starts at `sent`
    ([("click", T0)], "email", {"sent", "delivered", "opened", "clicked"}),
    ([("uclick", T0)], "email", {"sent", "delivered", "opened", "clicked"}),
    ([("click_push", T0)], "push", {"sent", "delivered", "opened", "clicked"}),
    ([("open_push", T0)], "push", {"sent", "delivered", "opened"}),
    ([("click_sms", T0)], "sms", {"sent", "delivered", "clicked"}),
    ([("telegram_bot_click", T0)], "telegram", {"sent", "delivered", "clicked"}),
    ([("telegram_group_deliv", T0)], "telegram", {"sent", "delivered"}),
    ([("read", T0)], "email", {"sent", "delivered", "opened"}),
    ([("send_sms", T0)], "sms", {"sent"}),
    ([("deliv_push", T0)], "push", {"sent", "delivered"}),
])
def test_implied_stages(events, channel, expected):
    s = summary_of(*(ev(k, t) for k, t in events))
    assert s.channel == channel
    assert stages(s) == expected
    r = row(s)
    for name in STAGE_NAMES:
        assert r[name] == (name in expected)


def test_stage_reached_at_is_the_earliest_evidence():
    # outbound at 10:05 but a click (implying queued) at 10:00: queued reached at 10:00
    s = summary_of(ev("outbound-email", T0 + 300 * S), ev("message-link-clicked", T0),
                   ev("message-sent", T0 + 600 * S))
    assert s.reached == {0: T0, 1: T0, 2: T0, 3: T0, 4: T0}
    s = summary_of(ev("outbound-sms", T0), ev("message-sent", T0 + 20 * S), ev("message-delivered", T0 + 50 * S),
                   ev("message-sent", T0 + 10 * S))
    assert s.reached == {0: T0, 1: T0 + 10 * S, 2: T0 + 50 * S}


# ---- outcomes and annotations --------------------------------------------------------------------------
@pytest.mark.parametrize("kinds", [
    ("message-delivered", "message-failed"), ("message-failed", "message-delivered"),
    ("message-opened", "message-failed"), ("message-link-clicked", "message-failed"),
])
def test_delivery_evidence_wins_over_failure(kinds):
    for order in itertools.permutations(range(2)):
        s = summary_of(*(ev(kinds[i], T0 + i * S) for i in order))
        assert s.delivered and not s.failed and s.conflicting and s.failure_seen
        assert row(s)["failed"] == 0 and row(s)["delivered"] == 1


def test_altcraft_conflict_deliv_and_hbounce():
    s = summary_of(ev("send", T0), ev("hbounce", T0 + S), ev("deliv", T0 + 2 * S))
    assert s.conflicting and not s.failed and row(s)["delivered"] == 1


@pytest.mark.parametrize("events", [
    [("message-failed", T0)],
    [("outbound-sms", T0), ("message-failed", T0 + S)],
    [("outbound-email", T0), ("message-sent", T0 + S), ("message-failed", T0 + 2 * S)],
    [("send", T0), ("undeliv", T0 + S)],
    [("send_sms", T0), ("undeliv_sms", T0 + S)],
    [("telegram_bot_send", T0), ("telegram_bot_undeliv", T0 + S)],
    [("suppress", T0)],
    [("hbounce", T0)],
])
def test_failed_only_without_delivery_evidence(events):
    s = summary_of(*(ev(k, t) for k, t in events))
    assert s.failed and not s.conflicting and not s.delivered
    assert row(s)["failed"] == 1 and row(s)["delivered"] == 0


def test_failure_alone_has_no_stage_and_channel_unknown():
    s = summary_of(ev("message-failed", T0))
    assert s.channel == "unknown" and s.reached == {} and row(s)["entered"] == 1


@pytest.mark.parametrize("kind,annotation", [
    ("sbounce", "soft_bounced"), ("complain", "complained"), ("unsub", "unsubscribed"), ("unsub_sms", "unsubscribed"),
])
def test_annotations_change_no_stage(kind, annotation):
    alone = summary_of(ev(kind, T0))
    assert alone.reached == {} and alone.annotations == (annotation,) and not alone.failed
    with_send = summary_of(ev("send", T0), ev(kind, T0 + S))
    assert stages(with_send) == {"sent"} and row(with_send)[annotation] == 1


def test_engagement_totals_count_events_not_messages():
    s = summary_of(ev("message-opened", T0), ev("message-opened", T0 + S), ev("message-link-clicked", T0 + 2 * S),
                   ev("message-link-clicked", T0 + 3 * S), ev("message-link-clicked", T0 + 4 * S))
    assert (s.opens_total, s.clicks_total) == (2, 3)
    # altcraft: only open/open_push add opens; u* and read/glanced/skimmed are stage-only
    s = summary_of(ev("open", T0), ev("uopen", T0), ev("read", T0 + S), ev("glanced", T0 + 2 * S),
                   ev("skimmed", T0 + 3 * S), ev("click", T0 + 4 * S), ev("uclick", T0 + 4 * S))
    assert (s.opens_total, s.clicks_total) == (1, 1)


# ---- duplicates -----------------------------------------------------------------------------------------
def test_duplicate_same_kind_same_instant():
    st = MessageState()
    r1 = apply(st, ev("message-opened", T0), window_us=W, now_us=T0)
    r2 = apply(r1.state, ev("message-opened", T0), window_us=W, now_us=T0 + S)
    assert not r1.duplicate and r2.duplicate and r2.delta == []
    assert r2.new.opens_total == 1 and len(r2.state.events) == 1
    assert r2.state.touched_us == T0  # a duplicate does not refresh the expiry clock


def test_duplicate_detected_across_string_forms_of_the_same_instant():
    base = {"version": "1.0", "tenantId": "foo", "kind": "message-opened", "data": {"messageId": "m1"}}
    forms = ["2024-08-27T13:00:00Z", "2024-08-27T13:00:00.000Z", "2024-08-27T15:00:00+02:00",
             "2024-08-27T08:00:00-05:00", "2024-08-27T13:00:00.000000999Z", "2024-08-27t13:00:00z"]
    st = None
    results = []
    for f in forms:
        out = normalize(orjson.dumps(dict(base, timestamp=f)))
        r = apply(st, out, window_us=W, now_us=T0)
        st = r.state
        results.append(r.duplicate)
    assert results == [False] + [True] * (len(forms) - 1)
    assert summarize("activity_sync", st.events).opens_total == 1


def test_same_instant_different_kind_is_not_a_duplicate():
    st = MessageState()
    assert st.add(ev("uopen", T0)) and st.add(ev("open", T0)) and st.add(ev("uclick", T0))
    assert len(st.events) == 3


def test_same_kind_different_instant_is_not_a_duplicate():
    st = MessageState()
    assert st.add(ev("message-opened", T0)) and st.add(ev("message-opened", T0 + 1))


# ---- entry time and cohort window ------------------------------------------------------------------------
@pytest.mark.parametrize("entry,window_s,start", [
    (T0, 3600, T0),
    (T0 + 59 * 60 * S + 59 * S + 999999, 3600, T0),
    (T0 + H, 3600, T0 + H),
    (T0 + 30 * 60 * S, 900, T0 + 30 * 60 * S),
    (T0 + 29 * 60 * S, 900, T0 + 15 * 60 * S),
    (T0 + 5 * H, 86400, 1724716800 * S),  # 2024-08-27T00:00:00Z
    (-1, 3600, -H),  # pre-1970: floor, not truncation toward zero
    (0, 3600, 0),
])
def test_cohort_window(entry, window_s, start):
    s = summary_of(ev("message-sent", entry), ev("message-delivered", entry + 10 * H))
    assert s.entry_us == entry
    assert s.window_start_us(window_s * S) == start


def test_entry_is_the_earliest_applied_event_whatever_the_kind():
    s = summary_of(ev("message-delivered", T0 + 2 * H), ev("message-failed", T0 + H), ev("outbound-email", T0 + 3 * H))
    assert s.entry_us == T0 + H and s.last_us == T0 + 3 * H


# ---- moves and deltas ---------------------------------------------------------------------------------------
def _fold(events, window_us=W):
    """Apply events one by one; return (funnel from summed deltas, final state, results)."""
    funnel: dict = {}
    state = None
    results = []
    for e in events:
        r = apply(state, e, window_us=window_us, now_us=e.ts_us)
        state = r.state
        results.append(r)
        for key, d in r.delta:
            acc = funnel.setdefault(key, [0] * N_FIELDS)
            for i, x in enumerate(d):
                acc[i] += x
    return funnel, state, results


def _final_contribution(events, window_us=W):
    s = summary_of(*events)
    return {(s.window_start_us(window_us), events[0].tenant, s.channel, s.campaign): list(s.vector())}


def _nonzero(funnel):
    return {k: v for k, v in funnel.items() if any(v)}


def test_late_earlier_event_moves_the_window():
    evs = [ev("message-sent", T0 + H + 10 * S), ev("message-delivered", T0 + H + 20 * S),
           ev("outbound-sms", T0 + 50 * 60 * S)]  # late outbound: 13:50, earlier window
    funnel, state, results = _fold(evs)
    assert results[2].moved and results[2].out_of_order
    assert not results[1].moved
    assert _nonzero(funnel) == _final_contribution(evs)
    (key, vec), = _nonzero(funnel).items()
    assert key == (T0, "t", "sms", None) and vec[:4] == [1, 1, 1, 1]
    # the old rows (14:00 unknown) are exactly zero, not negative
    assert funnel[(T0 + H, "t", "unknown", None)] == [0] * N_FIELDS


def test_unknown_to_sms_channel_move_in_the_same_window():
    evs = [ev("message-sent", T0 + 10 * S), ev("outbound-sms", T0 + 20 * S)]
    funnel, _, results = _fold(evs)
    assert results[1].moved and not results[1].out_of_order
    assert results[1].old.channel == "unknown" and results[1].new.channel == "sms"
    assert _nonzero(funnel) == {(T0, "t", "sms", None): [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]}


def test_channel_move_reshapes_the_ladder():
    # unknown ladder: clicked implies opened; once it is known to be sms, opened goes away
    evs = [ev("message-link-clicked", T0 + 10 * S), ev("outbound-sms", T0 + 20 * S)]
    funnel, _, results = _fold(evs)
    assert results[0].new.reached.keys() == {0, 1, 2, 3, 4}
    assert _nonzero(funnel) == {(T0, "t", "sms", None): [1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1]}


def test_delivery_after_failure_turns_failed_into_delivered():
    evs = [ev("send", T0), ev("undeliv", T0 + S), ev("deliv", T0 + 2 * S)]
    funnel, _, results = _fold(evs)
    assert results[1].new.failed and not results[2].new.failed
    assert results[2].new_conflict and not results[1].new_conflict
    assert dict(zip(VECTOR_FIELDS, funnel[(T0, "t", "email", None)]))["failed"] == 0


def test_new_stages_reports_only_newly_reached_ranks():
    _, _, results = _fold([ev("outbound-email", T0), ev("message-delivered", T0 + S), ev("message-opened", T0 + 2 * S)])
    assert [set(r.new_stages) for r in results] == [{0}, {1, 2}, {3}]


def test_sum_of_deltas_equals_final_contribution_for_every_order():
    evs = [ev("message-opened", T0 + 2 * H), ev("outbound-email", T0 + H + 5 * S), ev("message-failed", T0 + 3 * H),
           ev("message-sent", T0 - 10 * S), ev("message-link-clicked", T0 + 4 * H)]
    expected = _final_contribution(evs)
    for perm in itertools.permutations(evs):
        funnel, _, _ = _fold(list(perm))
        assert _nonzero(funnel) == expected
        assert all(x >= 0 for v in funnel.values() for x in v)


def test_random_sequences_with_duplicates_fold_to_the_final_contribution():
    rng = random.Random(11)
    kinds = list(AS_LIFECYCLE)
    for _ in range(300):
        evs = [ev(rng.choice(kinds), T0 + rng.randrange(-3 * H, 3 * H, 7 * 60 * S)) for _ in range(rng.randint(1, 8))]
        seq = evs + [rng.choice(evs) for _ in range(rng.randint(0, 3))]
        rng.shuffle(seq)
        for window_s in (60, 3600, 86400):
            funnel, state, _ = _fold(seq, window_s * S)
            assert _nonzero(funnel) == _final_contribution(evs, window_s * S)


def test_contribution_delta_edges():
    s = summary_of(ev("message-sent", T0))
    assert contribution_delta("t", W, None, s) == [((T0, "t", "unknown", None), s.vector())]
    assert contribution_delta("t", W, s, None) == [((T0, "t", "unknown", None), tuple(-x for x in s.vector()))]
    assert contribution_delta("t", W, s, s) == []


# ---- state serialization and expiry ----------------------------------------------------------------------------
TYPICAL = [ev("outbound-email", T0), ev("message-sent", T0 + 5 * S), ev("message-delivered", T0 + 60 * S),
           ev("message-opened", T0 + 600 * S)]


def test_state_bytes_typical_4_event_message_is_48_bytes():
    st = MessageState(alerted=0b10, touched_us=T0 + 601 * S)
    for e in TYPICAL:
        st.add(e)
    raw = st.to_bytes()
    assert len(raw) == 48  # 12-byte header + 9 bytes per (kind code, ts_us) event
    back = MessageState.from_bytes(raw)
    assert back == st and back.events == st.events and back.alerted == 0b10 and back.touched_us == T0 + 601 * S


@pytest.mark.parametrize("events", [
    [], [(-1, 0)], [(-(2**62), 3), (2**62, 40)], [(T0 + i, c) for i, c in enumerate(range(0, 43))],
])
def test_state_round_trip_edges(events):
    st = MessageState(sorted(events), alerted=255, touched_us=-5)
    assert MessageState.from_bytes(st.to_bytes()) == st


def test_state_round_trip_keeps_summary_and_duplicate_detection():
    st = MessageState()
    for e in TYPICAL:
        st.add(e)
    back = MessageState.from_bytes(st.to_bytes())
    assert summarize("activity_sync", back.events) == summarize("activity_sync", st.events)
    assert not back.add(TYPICAL[2])


@pytest.mark.parametrize("raw", [b"", b"\x01", b"\x02" + b"\x00" * 11, MessageState().to_bytes() + b"\x00",
                                 MessageState([(T0, 1)]).to_bytes()[:-1]])
def test_corrupt_state_raises_state_corrupt(raw):
    with pytest.raises(StateCorrupt):
        MessageState.from_bytes(raw)


def test_expired_is_strictly_after_retention():
    st = MessageState(touched_us=T0)
    week = 7 * 86400 * S
    assert not expired(st, now_us=T0 + week, retention_us=week)
    assert expired(st, now_us=T0 + week + 1, retention_us=week)
    assert not expired(st, now_us=T0, retention_us=week)


def test_apply_sets_touched_to_processing_time():
    r = apply(None, ev("message-sent", T0), window_us=W, now_us=T0 + 99 * S)
    assert r.state.touched_us == T0 + 99 * S and r.old is None and not r.moved


def test_summarize_refuses_an_empty_set():
    with pytest.raises(ValueError):
        summarize("activity_sync", [])


def test_add_ident_keeps_the_set_sorted_and_unique():
    rng = random.Random(3)
    st = MessageState()
    seen = set()
    for _ in range(2000):
        ident = (T0 + rng.randrange(50) * S, rng.randrange(7))
        assert st.add_ident(*ident) == (ident not in seen)
        seen.add(ident)
    assert st.events == sorted(seen)


def test_summary_is_immutable():
    s = summary_of(ev("message-sent", T0))
    with pytest.raises(AttributeError):
        s.channel = "sms"  # type: ignore[misc]
    assert s == summary_of(ev("message-sent", T0))
    assert s.window_start_us(W) == T0 and s.highest == 1 and not s.delivered
