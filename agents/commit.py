"""The commit point: the only owner of input and lifecycle offsets.

faust-streaming 0.15 can drop records between the fetch and the agent and commit past them
(see ``agents.offsets``). So the worker decides itself which records are done:

* :meth:`CommitPoint.admit` - which records of a batch may be processed now: none while a
  rebalance is under way, none of a partition no longer assigned;
* :meth:`CommitPoint.settle` - records an agent finished: the commit point advances over
  those done in order; a hole is re-read;
* :meth:`CommitPoint.unstall` - a partition whose point is stuck below records waiting (its
  last records were dropped) is re-read;
* :meth:`CommitPoint.lag` - records not yet *processed* (the stuck-alert gate);
* the consumer (``faust_compat.CommitPointConsumer``) commits :attr:`CommitPoint.next`.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from . import faust_compat
from .offsets import OffsetTracker

log = logging.getLogger("funnelwatch")

NOT_ASSIGNED_LAG = 1 << 62


class CommitPoint:
    """Per partition of :attr:`topics`, the next offset not yet processed."""

    def __init__(self, app: Any, topics: Iterable[str], metrics: Any, offset_stall_s: float) -> None:
        self.app = app
        self.topics = frozenset(topics)
        self.metrics = metrics
        self.offset_stall_s = offset_stall_s
        self.tracker = OffsetTracker()
        self.next = self.tracker.next  # what the consumer commits (faust_compat.CommitSource)
        self.accepting = False  # records may be processed (set by the rebalance sequence)
        self._seeks_logged: set[tuple[Any, int]] = set()
        self._stalls_logged: set[tuple[Any, int]] = set()
        self._progress_at: dict[Any, tuple[int, float]] = {}  # TP -> (commit point, monotonic time it moved)

    def attach(self) -> None:
        """Make the app's consumer commit from this point."""
        self.app.consumer.commit_point = self

    def reset(self) -> None:
        """Revoked: forget every partition (their records are re-read by whoever owns them next)."""
        self.accepting = False
        self.tracker.reset()
        self._progress_at.clear()

    def admit(self, batch: list) -> list:
        """The records of a batch this worker may process now.

        None while a rebalance is under way (revoked, not yet recovered): what was buffered
        is re-read from the committed offset by whoever owns the partition next. After it,
        none of a partition no longer assigned (buffered before the revoke): its new owner
        processes it; a late table write here would overwrite the owner's state.
        """
        if not self.accepting:
            return []
        assigned = self.app.consumer.assignment()
        for event in batch:
            if event.message.tp not in assigned:
                return [e for e in batch if e.message.tp in assigned]
        return batch

    async def settle(self, batch: list) -> None:
        """Account for a processed batch: advance each partition's commit point over the
        records done in order; re-read from a hole faust skipped."""
        per_tp: dict[Any, list[int]] = {}
        for event in batch:
            msg = event.message
            offs = per_tp.get(msg.tp)
            if offs is None:
                per_tp[msg.tp] = [msg.offset]
            else:
                offs.append(msg.offset)
        tracker = self.tracker
        for tp, offs in per_tp.items():
            if not tracker.knows(tp):
                start = await self._start_offset(tp)
                if start is not None:
                    tracker.start(tp, start)
            out = tracker.observe(tp, offs)
            for a, b in out.accepted:
                self.metrics.gap_accepted(tp.topic)
                log.warning("funnelwatch: %s/%d has no records at offsets %d..%d (skipped again after re-reads: "
                            "transaction markers or retention): moving on", tp.topic, tp.partition, a, b - 1,
                            extra=_where(tp, a))
            if out.seek_to is not None:
                await self._reread(tp, out.seek_to, self._seeks_logged, "records from offset %d were skipped "
                                   f"(got {_first_past(offs, out.seek_to)}): re-reading them")

    async def unstall(self) -> None:
        """Re-read partitions whose commit point is stuck below the records waiting.

        A hole shows when a later record arrives; if faust dropped a partition's *last*
        records, none does. Run by the deadline timer: a partition with records past its
        commit point that has not moved for ``offset_stall_s`` is re-read from it.
        """
        now = time.monotonic()
        consumer = self.app.consumer
        for tp, nxt in list(self.next.items()):
            seen = self._progress_at.get(tp)
            if seen is None or seen[0] != nxt:
                self._progress_at[tp] = (nxt, now)
                continue
            if now - seen[1] < self.offset_stall_s:
                continue
            try:
                hw = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - no longer assigned
                continue
            if hw is None or hw <= nxt:
                continue
            self._progress_at[tp] = (nxt, now)
            await self._reread(tp, nxt, self._stalls_logged, f"commit point %d has not moved for {now - seen[1]:.0f}s "
                               f"with records up to {hw - 1} waiting: re-reading from it")

    async def _reread(self, tp: Any, offset: int, logged: set[tuple[Any, int]], what: str) -> None:
        """Seek ``tp`` back to ``offset`` (counted); ``what`` % offset is logged at WARNING the
        first time per place (``logged``), at INFO when it repeats (e.g. through an outage)."""
        self.metrics.gap_repaired(tp.topic)
        first = (tp, offset) not in logged
        if first:
            if len(logged) > 10_000:
                logged.clear()
            logged.add((tp, offset))
        log.log(logging.WARNING if first else logging.INFO, "funnelwatch: %s/%d: " + what,
                tp.topic, tp.partition, offset, extra=_where(tp, offset))
        try:
            await self.app.consumer.seek(tp, offset)
        except Exception as exc:  # noqa: BLE001 - revoked meanwhile: its next owner reads it
            log.warning("funnelwatch: could not seek %s/%d back to %d: %r", tp.topic, tp.partition, offset, exc,
                        extra=_where(tp, offset))

    async def _start_offset(self, tp: Any) -> int | None:
        """Where this generation's processing of ``tp`` starts: the group's committed offset,
        else the log start (``auto_offset_reset=earliest``); None if the broker can't say."""
        consumer = self.app.consumer
        committed = faust_compat.committed_offset(consumer, tp)
        if committed is not None:
            return committed
        try:
            return await faust_compat.group_start_offset(consumer, tp)
        except Exception as exc:  # noqa: BLE001 - then the first record processed is the start
            log.warning("funnelwatch: no start offset for %s/%d: %r", tp.topic, tp.partition, exc)
            return None

    # ------------------------------------------------------------------ lag

    def lag(self, tp: Any) -> int:
        """Records not yet *processed* (not merely buffered) in an assigned partition."""
        consumer = self.app.consumer
        try:
            hw = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not assigned (yet): treat as lagging
            return NOT_ASSIGNED_LAG
        if hw is None:
            return 0
        nxt = self.next.get(tp)
        if nxt is not None:
            return max(0, hw - nxt)
        committed = faust_compat.committed_offset(consumer, tp)  # next offset to read, as committed
        return max(0, hw - (committed or 0))

    def lag_of_topics(self, names: Iterable[str]) -> int:
        names = set(names)
        return sum(self.lag(tp) for tp in self.app.consumer.assignment() if tp.topic in names)

    def lags(self) -> dict[str, int]:
        """``topic/partition`` -> lag of every assigned partition but the changelog's."""
        return {f"{tp.topic}/{tp.partition}": self.lag(tp) for tp in sorted(self.app.consumer.assignment())
                if not tp.topic.endswith("-changelog")}


def _first_past(offsets: list[int], hole: int) -> int | None:
    return next((o for o in offsets if o > hole), None)


def _where(tp: Any, offset: int) -> dict[str, Any]:
    """Log record fields of a place in a partition (``FUNNELWATCH_LOG_FORMAT=json`` shows them)."""
    return {"topic": tp.topic, "partition": tp.partition, "offset": offset}
