"""Timers: the deadline tick (stuck checks, the expiry sweep, stalled commit points) and the
``funnel-windows`` publication.

A due deadline becomes a check record on the message's own partition of the events topic,
so the lifecycle agent raises the alert and records its mark in the changelogged state. A
partition lagging more than ``alert_max_lag`` records (or a worker in recovery) holds the
alert back (SPEC §6; counted once per message and stage) until it has caught up. The
deadlines are kept per partition, and a gated partition's due ones are set aside once: a
tick costs what fell due since the last one, however long the gate stays shut.
"""
from __future__ import annotations

from typing import Any, Callable

import orjson
from faust.types import TP

from streams.kinds import STAGE_RANK
from streams.step import OP_CHECK, OP_EXPIRE

from .alerts import AlertBook
from .app import Topics
from .commit import CommitPoint
from .derived import DerivedState
from .expiry import ExpirySweep
from .windows import Windows


class Timers:
    def __init__(self, app: Any, topics: Topics, commit: CommitPoint, derived: DerivedState, book: AlertBook,
                 windows: Windows, partition_of: Callable[[str], int], *, alert_max_lag: int,
                 clock: Callable[[], int], expiry: ExpirySweep | None = None) -> None:
        self.app = app
        self.topics = topics
        self.commit = commit
        self.derived = derived
        self.book = book
        self.windows = windows
        self.partition_of = partition_of
        self.alert_max_lag = alert_max_lag
        self.clock = clock
        self.expiry = expiry
        self._events_topic = topics.events.get_topic_name()
        self._inputs = {t.get_topic_name() for t in topics.inputs}

    async def tick(self) -> None:
        if not self.commit.accepting:
            return
        await self.commit.unstall()
        now = self.clock()
        deadlines = self.derived.deadlines
        in_recovery: bool | None = None
        input_lag: int | None = None
        for part in deadlines.partitions():
            if not deadlines.has_due(part, now):
                continue
            if in_recovery is None:  # one snapshot per tick: this tick's own checks don't count
                in_recovery = bool(getattr(self.app, "in_recovery", False))
                input_lag = self.commit.lag_of_topics(self._inputs)
            if in_recovery or self.commit.lag(TP(self._events_topic, part)) + (input_lag or 0) > self.alert_max_lag:
                # Gated: newly due deadlines are held (counted once per message and stage); the
                # ones held before are not looked at again until the gate opens.
                for k, stage, _d in deadlines.hold_due(part, now):
                    self.book.suppress(k.encode(), stage)
                continue
            for k, stage, _d in [*deadlines.release(part), *deadlines.pop_due(part, now)]:
                self.book.unsuppress(k.encode(), stage)
                await self._send_control(k, [OP_CHECK, STAGE_RANK[stage]])
        if self.expiry is not None:
            for key in self.expiry.due(now, self.derived.sizes()):
                await self._send_control(key.decode(), [OP_EXPIRE])

    async def _send_control(self, key: str, op: list) -> None:
        """A control record on the message's own partition (the same function places its events)."""
        await self.app.producer.send(self._events_topic, key.encode(), orjson.dumps(op),
                                     self.partition_of(key), None, None)

    async def publish_windows(self) -> None:
        """Publish changed funnel rows (coalesced) from the owner of events partition 0."""
        if not self.commit.accepting or not self._owns_partition0():
            return
        await self.windows.publish()

    def _owns_partition0(self) -> bool:
        return any(tp.topic == self._events_topic and tp.partition == 0
                   for tp in self.app.assignor.assigned_actives())
