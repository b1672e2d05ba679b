"""`funnelwatch generate`: deterministic, realistic, exercising every input bucket."""
from __future__ import annotations

from agents.generate import Mix, generate
from streams.events import CanonicalEvent, Rejected
from streams.normalize import normalize
from streams.report import Replay

NOW_US = 1_795_000_000_000_000


def test_same_seed_same_records_and_other_seed_differs() -> None:
    a = list(generate(Mix(messages=200, seed=7), NOW_US))
    assert a == list(generate(Mix(messages=200, seed=7), NOW_US))
    assert a != list(generate(Mix(messages=200, seed=8), NOW_US))


def test_mix_covers_both_sources_duplicates_rejects_and_stuck() -> None:
    mix = Mix(messages=2000, seed=3, p_stuck=0.1, p_duplicate=0.05, p_bad=0.02)
    records = list(generate(mix, NOW_US))
    outcomes = [normalize(r) for r in records]
    sources = {o.source for o in outcomes if type(o) is CanonicalEvent}
    assert sources == {"activity_sync", "altcraft"}
    assert any(type(o) is Rejected and o.reason == "invalid_json" for o in outcomes)
    rp = Replay()
    for r in records:
        rp.feed_line(r)
    report = rp.report(NOW_US)
    assert report["input"]["duplicates"] > 0
    assert report["stuck"], "a share of messages is meant to get stuck"
    channels = {row["channel"] for row in report["windows"]}
    assert {"sms", "email", "push", "telegram"} <= channels
    inp = report["input"]
    assert inp["lines"] == (inp["applied"] + inp["duplicates"] + sum(inp["rejected"].values())
                            + sum(inp["ignored"].values()) + sum(inp["non_lifecycle"].values()))


def test_late_events_arrive_after_newer_ones() -> None:
    records = list(generate(Mix(messages=300, seed=2, p_late=0.2, p_out_of_order=0.0, p_bad=0.0), NOW_US))
    ts = [normalize(r).ts_us for r in records]
    # Late events come after everything else: far older than the newest event seen before them.
    tail = ts[-20:]
    assert max(ts[:-20]) - min(tail) > 10 * 60 * 1_000_000
