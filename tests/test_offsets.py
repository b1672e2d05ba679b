"""OffsetTracker: the commit point advances only over records processed in order (table-driven)."""
from __future__ import annotations

import pytest

from agents.offsets import OffsetTracker

TP = ("events", 0)


@pytest.mark.parametrize(
    ("start", "batches", "next_after", "seeks"),
    [
        # in order from the committed offset
        (10, [[10, 11, 12]], 13, [None]),
        # repeats below the mark (re-read after a seek, redelivery) change nothing
        (10, [[10, 11], [9, 10, 11, 12]], 13, [None, None]),
        # a hole mid-batch: the mark stops before it, re-read from there
        (10, [[10, 11, 13, 14]], 12, [12]),
        # the first batch after a rebalance starts past the committed offset
        (10, [[40, 41]], 10, [10]),
        # the hole is re-read, then the mark passes everything processed in order
        (10, [[10, 12], [11, 12, 13]], 14, [11, None]),
        # no known start: the first record is the start
        (None, [[7, 8]], 9, [None]),
    ],
)
def test_mark_and_seeks(start, batches, next_after, seeks) -> None:
    t = OffsetTracker()
    if start is not None:
        t.start(TP, start)
    got = [t.observe(TP, b).seek_to for b in batches]
    assert got == seeks
    assert t.next[TP] == next_after


def test_a_hole_the_broker_really_has_is_accepted_after_repeated_sightings() -> None:
    t = OffsetTracker(accept_after=3)
    t.start(TP, 5)
    assert t.observe(TP, [5, 7]).seek_to == 6  # 6 is a transaction marker, say
    assert t.observe(TP, [7, 8]).seek_to == 6  # re-read: the broker skips it again
    out = t.observe(TP, [7, 8])  # third time: real
    assert out.seek_to is None and out.accepted == [(6, 7)]
    assert t.next[TP] == 9


def test_stale_records_between_sightings_do_not_make_a_hole_real() -> None:
    """Records queued before the seek arrive with other first offsets: never accepted from those."""
    t = OffsetTracker(accept_after=2)
    t.start(TP, 0)
    assert t.observe(TP, [0, 5]).seek_to == 1
    assert t.observe(TP, [9, 10]).seek_to == 1  # queued before the seek: a different first
    assert t.observe(TP, [1, 2, 3, 4, 5]).seek_to is None  # the re-read arrives
    assert t.next[TP] == 6


def test_sightings_are_forgotten_once_the_mark_moves() -> None:
    t = OffsetTracker(accept_after=2)
    t.start(TP, 0)
    assert t.observe(TP, [2]).seek_to == 0
    assert t.observe(TP, [0, 1, 2]).seek_to is None
    assert t.observe(TP, [5]).seek_to == 3  # a new hole, first sighting
    assert t.next[TP] == 3


def test_partitions_are_independent_and_reset_forgets_all() -> None:
    t = OffsetTracker()
    t.start(("a", 0), 0)
    t.start(("a", 1), 100)
    t.observe(("a", 0), [0, 1])
    t.observe(("a", 1), [100])
    assert t.next == {("a", 0): 2, ("a", 1): 101}
    t.start(("a", 0), 50)  # start never moves a known mark
    assert t.next[("a", 0)] == 2
    t.reset()
    assert not t.knows(("a", 0)) and t.next == {}
