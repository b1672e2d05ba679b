"""Property tests (hypothesis): the funnel is a function of the *set* of events (SPEC §5, §9).

- any permutation of the lines gives the same report (byte-identical JSON);
- any duplication of lines gives the same ``windows`` and ``stuck``;
- the incremental path (``apply`` per event, deltas summed) equals the Replay report;
- every counted line lands in exactly one bucket, garbage included.
"""
from __future__ import annotations

from datetime import timedelta

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.events import CanonicalEvent
from streams.lifecycle import N_FIELDS, apply
from streams.normalize import normalize
from streams.report import Replay, dumps_report, window_rows
from streams.timeparse import to_datetime

S = 1_000_000
T0 = 1724763600 * S  # 2024-08-27T13:00:00Z

AS_KINDS = ["outbound-sms", "outbound-email", "message-sent", "message-delivered", "message-opened",
            "message-link-clicked", "message-failed"]
AS_OTHER = ["inbound-sms-matched", "inbound-sms-unmatched", "experience-start", "experience-complete",
            "experience-failed", "action", "queued", "sent-to-gateway", "message-bounced"]
AC_TYPES = ["send", "send_sms", "send_push", "telegram_bot_send", "telegram_group_send", "deliv", "deliv_sms",
            "deliv_push", "telegram_bot_deliv", "telegram_group_deliv", "undeliv", "undeliv_sms",
            "telegram_bot_undeliv", "telegram_group_undeliv", "hbounce", "suppress", "sbounce", "complain", "unsub",
            "unsub_sms", "open", "open_push", "read", "glanced", "skimmed", "uopen", "uopen_push", "click",
            "click_sms", "click_push", "telegram_bot_click", "telegram_group_click", "uclick", "uclick_sms",
            "uclick_push", "telegram_bot_uclick"]
AC_OTHER = ["confirm", "confirmsub", "promocode_attach", "segs_add", "segs_remove", "profile_merge", "profile_split",
            "campaign_launch", "camp_error", "undeliv_push", "pixel"]

PROPS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# A coarse grid makes equal instants (hence duplicates) likely; the fine range spans several windows.
instants = st.one_of(
    st.integers(-4 * 3600, 4 * 3600).map(lambda s: T0 + s * S),
    st.integers(-4 * 3600 * S, 4 * 3600 * S).map(lambda us: T0 + us),
    st.sampled_from([T0 - 1, T0, T0 + 59 * 60 * S, T0 + 3600 * S, T0 + 3600 * S + 1, T0 + 7200 * S]),
)


@st.composite
def timestamp_text(draw, ts_us: int) -> str:
    """One of several RFC 3339 spellings of the same instant (offsets, 0/3/6/9 fraction digits)."""
    offset_min = draw(st.sampled_from([0, 0, 0, 60, -300, 330, 600, -720]))
    dt = to_datetime(ts_us) + timedelta(minutes=offset_min)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    us = dt.microsecond
    frac_form = draw(st.sampled_from(["auto", "6", "9"]))
    if frac_form == "6":
        frac = f".{us:06d}"
    elif frac_form == "9":
        frac = f".{us:06d}{draw(st.integers(0, 999)):03d}"  # nanoseconds: truncated away
    else:
        frac = f".{us:06d}".rstrip("0") if us else ""
    if offset_min == 0:
        zone = draw(st.sampled_from(["Z", "+00:00"]))
    else:
        sign = "+" if offset_min > 0 else "-"
        zone = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    return base + frac + zone


@st.composite
def activity_sync_event(draw, lifecycle_only: bool = False) -> dict:
    kind = draw(st.sampled_from(AS_KINDS if lifecycle_only else AS_KINDS * 3 + AS_OTHER))
    ev = {"timestamp": draw(timestamp_text(draw(instants))), "tenantId": draw(st.sampled_from(["foo", "bar"])),
          "kind": kind, "data": {"messageId": draw(st.sampled_from(["m1", "m2", "m3", "m4", "m5"])),
                                 "detail": "private detail"}, "pii": ["detail"]}
    if draw(st.booleans()):
        ev["version"] = "1.0"
    return ev


@st.composite
def altcraft_event(draw, lifecycle_only: bool = False) -> dict:
    et = draw(st.sampled_from(AC_TYPES if lifecycle_only else AC_TYPES * 2 + AC_OTHER))
    return {"event_type": et, "event_date": draw(timestamp_text(draw(instants))),
            "account_id": draw(st.sampled_from([23, "23", 7, "0007"])),
            "is_test": (not lifecycle_only) and draw(st.integers(0, 9)) == 0,
            "custom_data": {"email": "alice@example.org"},
            "event_data": {"send_message_id": draw(st.sampled_from(["a1", "a2", "a3", "m1"])), "campaign_id": 9}}


def lifecycle_event():
    return st.one_of(activity_sync_event(True), altcraft_event(True))


def any_event():
    return st.one_of(activity_sync_event(), altcraft_event())


garbage = st.one_of(
    st.sampled_from([b"{", b"[]", b"{}", b'"x"', b"null", b'{"kind": "message-sent", "tenantId": "foo"}',
                     b'{"event_type": "send"}', b'{"event_type": "send", "event_date": "2024-08-27T13:00:00Z", '
                     b'"account_id": 1, "event_data": {}}', b"   ", b"\t"]),
    st.binary(max_size=40),
)

event_lists = st.lists(lifecycle_event(), min_size=1, max_size=24)
now_opts = st.one_of(st.none(), st.integers(-5 * 3600, 10 * 3600).map(lambda s: T0 + s * S))
window_opts = st.sampled_from([60, 900, 3600, 86400])


def replay(lines: list[bytes], window_s: int = 3600, now_us: int | None = None) -> dict:
    rp = Replay(window_s=window_s)
    for line in lines:
        rp.feed_line(line)
    return rp.report(now_us)


@PROPS
@given(events=event_lists, data=st.data(), window_s=window_opts, now_us=now_opts)
def test_any_permutation_gives_the_same_report(events, data, window_s, now_us):
    lines = [orjson.dumps(e) for e in events]
    perm = data.draw(st.permutations(lines))
    a = replay(lines, window_s, now_us)
    b = replay(perm, window_s, now_us)
    assert dumps_report(a) == dumps_report(b)


@PROPS
@given(events=st.lists(any_event(), min_size=1, max_size=24), data=st.data(), window_s=window_opts,
       now_us=now_opts)
def test_any_duplication_gives_the_same_windows_and_stuck(events, data, window_s, now_us):
    lines = [orjson.dumps(e) for e in events]
    extra = data.draw(st.lists(st.sampled_from(lines), max_size=20))
    mixed = data.draw(st.permutations(lines + extra))
    a = replay(lines, window_s, now_us)
    b = replay(mixed, window_s, now_us)
    assert a["windows"] == b["windows"]
    assert a["stuck"] == b["stuck"]
    assert b["input"]["applied"] == a["input"]["applied"]
    assert b["input"]["duplicates"] >= a["input"]["duplicates"]


@PROPS
@given(events=st.lists(any_event(), min_size=1, max_size=30), window_s=window_opts)
def test_incremental_apply_equals_the_replay_report(events, window_s):
    lines = [orjson.dumps(e) for e in events]
    window_us = window_s * S
    funnel: dict = {}
    states: dict = {}
    for line in lines:
        out = normalize(line)
        if type(out) is not CanonicalEvent:
            continue
        r = apply(states.get(out.key), out, window_us=window_us, now_us=out.ts_us)
        states[out.key] = r.state
        for key, d in r.delta:
            acc = funnel.setdefault(key, [0] * N_FIELDS)
            for i, x in enumerate(d):
                acc[i] += x
    assert all(x >= 0 for v in funnel.values() for x in v)  # never negative: nothing counted under a stale row
    assert window_rows(funnel) == replay(lines, window_s)["windows"]


@PROPS
@given(items=st.lists(st.one_of(any_event().map(orjson.dumps), garbage), max_size=50), data=st.data())
def test_every_counted_line_lands_in_exactly_one_bucket(items, data):
    extra = data.draw(st.lists(st.sampled_from(items), max_size=10)) if items else []
    lines = items + extra
    rep = replay(lines)
    inp = rep["input"]
    assert inp["lines"] == sum(1 for line in lines if line.strip())
    assert inp["lines"] == (inp["applied"] + inp["duplicates"] + sum(inp["rejected"].values())
                            + sum(inp["ignored"].values()) + sum(inp["non_lifecycle"].values()))
    assert all(v > 0 for m in ("rejected", "ignored", "non_lifecycle") for v in inp[m].values())
    assert sum(r["entered"] for r in rep["windows"]) <= inp["applied"]
    assert b"private detail" not in dumps_report(rep) and b"alice@example.org" not in dumps_report(rep)


@PROPS
@given(items=st.lists(st.one_of(any_event().map(orjson.dumps), garbage), max_size=40))
def test_bulk_line_and_event_feeds_agree(items):
    import gc

    from streams.normalize import normalize_obj

    bulk = Replay()
    bulk.feed_lines(line + b"\n" for line in items)
    single = Replay()
    for line in items:
        single.feed_line(line)
    assert dumps_report(bulk.report()) == dumps_report(single.report())
    assert gc.isenabled()
    # feed_event (CanonicalEvent objects) reaches the same windows and stuck
    by_event = Replay()
    for line in items:
        try:
            out = normalize_obj(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
        if type(out) is CanonicalEvent:
            by_event.feed_event(out)
    a, b = bulk.report(), by_event.report()
    assert (a["windows"], a["stuck"]) == (b["windows"], b["stuck"])


def test_gc_is_restored_when_the_stream_fails():
    import gc

    def broken():
        yield b'{"event_type": "send"}'
        raise OSError("disk gone")

    rp = Replay()
    assert gc.isenabled()
    try:
        rp.feed_lines(broken())
    except OSError:
        pass
    assert gc.isenabled() and rp.lines == 1
