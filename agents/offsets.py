"""Which input offsets are really done: the worker's only commit point.

faust-streaming 0.15 can drop records between the fetch and the agent (flow control during
a rebalance, a generation change, a partition paused mid-fetch) and then commits past them
(its ack bookkeeping books a jump in offsets as a compaction gap, and it acks the records
it skipped). Those events would be lost. So the worker keeps its own account, per
partition, of the next offset not yet processed: it advances only over records an agent
has finished, in order; a record past it means a *hole*, which is re-read (seek back) and
never committed past. Offsets are committed from this account alone (see
``Pipeline._take_over_commits``).

A hole the broker really has (transaction markers, records removed by retention) shows up
again at the same place after every re-read: after ``accept_after`` sightings it is
accepted and counted.

Pure bookkeeping, no faust: partitions are any hashable key.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field


@dataclass
class Observed:
    """One batch's verdict for one partition."""

    seek_to: int | None = None  # a hole starts here: re-read from this offset
    accepted: list[tuple[int, int]] = field(default_factory=list)  # holes [from, to) taken as real


class OffsetTracker:
    """Per partition, the next offset not yet processed (everything below it is done)."""

    def __init__(self, accept_after: int = 3) -> None:
        self.accept_after = accept_after
        self.next: dict[Hashable, int] = {}
        self._sightings: dict[Hashable, tuple[int, dict[int, int]]] = {}  # tp -> (hole start, {first: seen})

    def reset(self) -> None:
        """Forget every partition (their records are someone else's, or re-read, after a rebalance)."""
        self.next.clear()
        self._sightings.clear()

    def knows(self, tp: Hashable) -> bool:
        return tp in self.next

    def start(self, tp: Hashable, offset: int) -> None:
        """Where processing of ``tp`` starts (the committed offset, or the log start)."""
        self.next.setdefault(tp, offset)

    def observe(self, tp: Hashable, offsets: Iterable[int]) -> Observed:
        """Records of one partition an agent has finished, in delivery order.

        Offsets below the mark are repeats (harmless); the one at the mark advances it; one
        past it is a hole: the mark stays, and the caller seeks back to ``seek_to`` (the
        records after the hole were processed, and will be again: repeats are harmless).
        """
        out = Observed()
        nxt = self.next.get(tp)
        for o in offsets:
            if nxt is None:
                nxt = o + 1  # no known start: the first record is it
            elif o == nxt:
                nxt += 1
            elif o > nxt:
                start, seen = self._sightings.get(tp, (nxt, {}))
                if start != nxt:
                    seen = {}
                n = seen[o] = seen.get(o, 0) + 1
                if n >= self.accept_after:
                    out.accepted.append((nxt, o))
                    nxt = o + 1
                    self._sightings.pop(tp, None)
                    continue
                self._sightings[tp] = (nxt, seen)
                out.seek_to = nxt
                break
        if nxt is not None:
            self.next[tp] = nxt
            hole = self._sightings.get(tp)
            if hole is not None and hole[0] != nxt:
                del self._sightings[tp]
        return out
