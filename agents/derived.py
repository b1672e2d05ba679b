"""State derived from the owned table partitions: funnel share, deadline index, in-flight
count and campaign names, kept **per partition** (expiry needs none: ``agents.expiry``).

None of it is persisted: it is updated from each message step's effects and, after a
rebalance or restart, built from the table for the partitions newly owned only
(:meth:`DerivedState.rebuild`): a revoked partition's part is dropped whole, a kept one is
left as it is (nothing is processed between the revoke and the end of the rebalance, and
every step's table write lands before its batch ends, so it still equals its table
partition). So it always equals what the owned messages add up to.

A part counts as kept only if its partition was this worker's in *every* generation of the
group since the last rebuild (:meth:`DerivedState.note_assignment`): a rebalance can be
superseded before it completes (no rebuild), and a worker can miss a generation (it rejoined
late); in either case another worker may have owned the partition meanwhile and written its
table through the changelog, which recovery brings into the store but not into the part.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from streams.campaigns import CampaignNames, names_key, split_names_key, unpack_name
from streams.events import split_message_key
from streams.lifecycle import MessageState, summarize
from streams.step import Effects, StepConfig
from streams.stuck import PartitionedDeadlines, pending_deadline

from .alerts import AlertBook
from .funnel import FunnelCollector, FunnelShares

log = logging.getLogger("funnelwatch")

#: ``(partition, key, value)`` of the stored entries of the given partitions.
ItemsOf = Callable[[set[int]], Iterable[tuple[int, bytes, bytes]]]


class DerivedState:
    """This worker's funnel share, deadline index, in-flight count and campaign names, each
    per owned partition."""

    def __init__(self, cfg: StepConfig, metrics: Any, share: FunnelShares, collector: FunnelCollector,
                 partition_of: Callable[[str], int]) -> None:
        self.cfg = cfg
        self.partition_of = partition_of
        self.metrics = metrics
        self.share = share
        self.collector = collector  # the funnel counters of /metrics, from ``share``
        self.deadlines = PartitionedDeadlines(partition_of)
        self.owned: set[int] = set()  # partitions whose part is built
        self._continuous: set[int] = set()  # owned in every generation since the last rebuild
        self._generation: int | None = None  # the group generation of the last assignment
        self._inflight: dict[int, int] = {}
        self._inflight_total = 0  # Σ _inflight, kept as it changes (read per step)
        self._names: dict[int, CampaignNames] = {}

    @property
    def inflight(self) -> int:
        return self._inflight_total

    def sizes(self) -> dict[int, int]:
        """Stored message states per owned partition."""
        return dict(self._inflight)

    def apply(self, key: str, fx: Effects, now_us: int) -> None:
        """Carry out one message step's effects on the derived state."""
        p = self.partition_of(key)
        if fx.delta:
            self.share.part(p).apply(fx.source, fx.delta, now_us)
        for channel, vec in fx.retired:
            self.collector.retire(fx.source, fx.tenant, channel, vec)
        if fx.schedule:
            d = fx.deadline
            if d is None:
                self.deadlines.cancel(key)
            else:
                self.deadlines.schedule(key, d.deadline_us, d.stage)
        if fx.inflight_delta:
            self._inflight[p] = self._inflight.get(p, 0) + fx.inflight_delta
            self._inflight_total += fx.inflight_delta
            self.metrics.inflight_set(self._inflight_total)

    # ------------------------------------------------------------------ campaign names
    def name_of(self, tenant: str, campaign: str) -> tuple[int, str] | None:
        names = self._names.get(self.partition_of(names_key(tenant, campaign)))
        return names.names.get((tenant, campaign)) if names is not None else None

    def note_name(self, tenant: str, campaign: str, ts_us: int, name: str) -> None:
        p = self.partition_of(names_key(tenant, campaign))
        names = self._names.get(p)
        if names is None:
            names = self._names[p] = CampaignNames()
        names.note(tenant, campaign, ts_us, name)

    @property
    def names(self) -> CampaignNames:
        """Every name of the owned partitions (a new object; names are disjoint by partition)."""
        out = CampaignNames()
        for names in self._names.values():
            out.names.update(names.names)
        return out

    # ------------------------------------------------------------------ rebalance
    def note_assignment(self, generation: int, partitions: set[int]) -> None:
        """The partitions assigned in a generation of the group (every assignment, also one
        superseded before its rebalance completes; noting one twice changes nothing). A
        generation skipped (this worker was not in it) leaves no partition continuous."""
        if self._generation is not None and generation not in (self._generation, self._generation + 1):
            self._continuous = set()
        else:
            self._continuous &= partitions
        self._generation = generation

    def kept(self, active: set[int]) -> set[int]:
        """The partitions of ``active`` whose parts a rebuild keeps as they are: built, and
        this worker's in every generation since (the others' parts are built from the table)."""
        return active & self.owned & self._continuous

    def rebuild(self, active: set[int], messages_of: ItemsOf, names_of: ItemsOf, book: AlertBook) -> tuple[int, int]:
        """Own exactly ``active``: drop the parts of partitions no longer owned, build the parts
        of newly owned ones from their stored messages and names; kept parts (owned throughout,
        see :meth:`note_assignment`) stay as they are, others owned before are built again.
        The book's open rows follow. Returns (messages scanned, partitions kept)."""
        kept_parts = self.kept(active)
        for p in self.owned - kept_parts:  # no longer owned, or not owned throughout: built again
            self.share.drop(p)
            self.deadlines.drop(p)
            self._inflight.pop(p, None)
            self._names.pop(p, None)
        new = active - kept_parts
        kept = len(kept_parts)
        partition_of = self.partition_of
        book.keep_open(lambda key: partition_of(key.decode()) in kept_parts)  # new partitions' rows: from the scan
        cfg = self.cfg
        published = book.published
        n = 0
        for p in new:
            self.share.part(p)
            self._inflight[p] = 0
            self._names[p] = CampaignNames()
        for p, key, raw in messages_of(new):
            if not raw:
                continue
            k = key.decode()
            st = MessageState.from_bytes(raw)
            source, tenant, _ = split_message_key(k)
            s = summarize(source, st.events, st.campaign)
            self.share.part(p).add_summary(tenant, s, cfg.window_us, st.touched_us)
            d = pending_deadline(s, tenant, st.alerted, cfg.slas)  # marks not yet written: their check writes them
            if d is not None:
                self.deadlines.schedule(k, d.deadline_us, d.stage)
            if st.alerted or key in published:  # else no open row (the scan's partitions have none yet)
                book.set_open(key, book.open_from_state(key, st, s))
            self._inflight[p] += 1
            n += 1
        for p, key, raw in names_of(new):
            if raw:
                tenant, campaign = split_names_key(key.decode())
                ts, name = unpack_name(raw)
                self._names[p].note(tenant, campaign, ts, name)
        self.owned = set(active)
        self._continuous = set(active)
        self._inflight_total = sum(self._inflight.values())
        self.metrics.inflight_set(self._inflight_total)
        return n, kept
