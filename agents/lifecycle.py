"""The lifecycle agent: per batch of the events topic, one :func:`streams.step.step` per
message key, then its effects, in this order:

1. alerts sent, and acked by Kafka (:class:`~agents.alerts.AlertSender`);
2. the state written to the table (one changelog record per key per batch, sent as one record
   batch per partition) or deleted, and each campaign name that wins over the stored one
   written to the names table (SPEC §11); every read and write in the partition of the key's
   own records (``BatchedChangelogTable.get_for``/``put_for``);
3. the batch settled at the commit point.

Derived state (funnel share, indexes), the alert book and metrics follow each step at once.
"""
from __future__ import annotations

from typing import Any, AsyncIterable, Callable

import orjson

from streams.campaigns import name_wins, pack_name, split_names_key
from streams.lifecycle import MessageState
from streams.step import OP_EVENT, OP_EVENTS, Effects, StepConfig, step

from .alerts import AlertBook, AlertSender, count_marks
from .app import OP_BUNDLE, OP_BUNDLE_CAMPAIGNS
from .clock import now_us
from .commit import CommitPoint
from .derived import DerivedState


class Lifecycle:
    """Applies the events topic to the messages table."""

    def __init__(self, table: Any, cfg: StepConfig, derived: DerivedState, book: AlertBook, sender: AlertSender,
                 commit: CommitPoint, metrics: Any, clock: Callable[[], int] = now_us,
                 names_table: Any = None) -> None:
        self.table = table
        self.names_table = names_table
        self.cfg = cfg
        self.derived = derived
        self.book = book
        self.sender = sender
        self.commit = commit
        self.metrics = metrics
        self.clock = clock

    def load(self, key: bytes) -> MessageState | None:
        raw = self.table.get(key)
        return MessageState.from_bytes(raw) if raw else None

    def agent(self, batches: AsyncIterable[list]) -> Callable[[Any], Any]:
        """The events topic's agent: its records come a fetch at a time from ``batches``
        (``faust_compat.deliver_in_batches``), not through faust's stream."""

        async def lifecycle(stream: Any) -> None:  # noqa: ARG001 - faust's stream of the topic stays idle
            async for batch in batches:
                batch = self.commit.admit(batch)
                if batch:
                    await self.process(batch)

        return lifecycle

    async def process(self, batch: list) -> None:
        # key -> [(op, event)]: bundles are unpacked; every entry of a bundle belongs to the
        # bundle's partition, as do the check/expire records keyed by message key.
        groups: dict[bytes, list] = {}
        names: dict[str, tuple[int, str, Any]] = {}  # names key -> latest (ts_us, name, its record)
        for event in batch:
            op = orjson.loads(event.value)
            kind = op[0]
            if kind == OP_BUNDLE_CAMPAIGNS or kind == OP_BUNDLE:
                if kind == OP_BUNDLE_CAMPAIGNS:  # [op, names, [key, code, ts, campaign, ...], ...]
                    for nk, ts, name in op[1]:
                        cur = names.get(nk)
                        if name_wins(ts, name, cur):
                            names[nk] = (ts, name, event)
                    entries, op_events = op[2:], OP_EVENTS
                else:  # [op, [key, code, ts, ...], ...]
                    entries, op_events = op[1:], OP_EVENT
                for entry in entries:
                    key = entry[0].encode()
                    entry[0] = op_events
                    g = groups.get(key)
                    if g is None:
                        groups[key] = [(entry, event)]
                    else:
                        g.append((entry, event))
            else:
                g = groups.get(event.key)
                if g is None:
                    groups[event.key] = [(op, event)]
                else:
                    g.append((op, event))
        table = self.table
        writes: list[tuple[bytes, bytes | None, Any]] = []
        alerts: list[tuple[bytes, dict]] = []
        for key, ops in groups.items():
            fx = self._step(key, ops, alerts)
            if fx.state is not None:
                if fx.write:
                    writes.append((key, fx.state.to_bytes(), ops[-1][1]))
            elif fx.delete:
                writes.append((key, None, ops[-1][1]))
        # Alerts are acked before the state marks that record them land: a crash never loses
        # one; marks it loses are re-read by the next owner (agents.alerts.reconcile).
        for key, alert in alerts:
            await self.sender.send(key, alert)
        await self.sender.flush()
        for key, value, event in writes:
            # In the partition of the key's own record (table and events topic are co-partitioned).
            table.put_for(event, key, value)
        if names:
            self._write_names(names)
        # The batch's changelog records, one record batch per partition; faust's commit flushes
        # the producer before it commits offsets past this batch.
        await table.send_changelog_batch()
        if names:
            await self.names_table.send_changelog_batch()
        await self.commit.settle(batch)

    def _write_names(self, names: dict[str, tuple[int, str, Any]]) -> None:
        """Names that win over the known ones: to the names table (in the partition of their
        key, which is that of the bundle that brought them) and the derived names."""
        derived = self.derived
        for nk, (ts, name, event) in names.items():
            tenant, campaign = split_names_key(nk)
            if name_wins(ts, name, derived.name_of(tenant, campaign)):
                self.names_table.put_for(event, nk.encode(), pack_name(ts, name))
                derived.note_name(tenant, campaign, ts, name)

    def _step(self, key: bytes, ops: list, alerts: list[tuple[bytes, dict]]) -> Effects:
        """One message's step (its stored state read in the partition of its records) and the
        effects kept in memory; its alerts are appended to ``alerts`` for the batch to send."""
        book = self.book
        published = book.published.get(key)
        now = self.clock()
        k = key.decode()
        raw = self.table.get_for(ops[-1][1], key)
        fx = step(k, MessageState.from_bytes(raw) if raw else None, [op for op, _ in ops], now, self.cfg, published)
        if fx.published_used:
            book.published.pop(key, None)
            count_marks(book, fx.reconciled)
        m = self.metrics
        if fx.duplicates:
            for _ in range(fx.duplicates):
                m.duplicate(fx.source)
        if fx.created:
            m.tenants.label(fx.tenant, "funnel_stage_reached_total")  # admit, or count the overflow once
        for _ in range(fx.out_of_order):
            m.out_of_order()
        for _ in range(fx.late):
            m.late_event()
        for _ in range(fx.conflicts):
            m.conflicting_outcome()
        for channel, a, b, secs in fx.latencies:
            m.latency(channel, a, b, secs)
        self.derived.apply(k, fx, now)
        for alert in fx.alerts:
            alerts.append((key, alert))
        for stage in fx.settled_stages:
            book.unsuppress(key, stage)
        if fx.open_known:
            book.set_open(key, fx.open_alert)
        return fx

