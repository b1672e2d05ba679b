"""State derived from the owned table partitions: funnel share, deadline and expiry indexes,
campaign names.

None of it is persisted: it is updated from each message step's effects and rebuilt from
the table after every rebalance or restart (:meth:`DerivedState.rebuild`), so it always
equals what the owned messages add up to.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from streams.campaigns import CampaignNames, split_names_key, unpack_name
from streams.events import split_message_key
from streams.lifecycle import MessageState, summarize
from streams.step import Effects, StepConfig
from streams.stuck import DeadlineIndex, PartitionedDeadlines, pending_deadline

from .alerts import AlertBook
from .funnel import FunnelCollector, FunnelShare

log = logging.getLogger("funnelwatch")


class DerivedState:
    """This worker's funnel share, deadline index, expiry index and in-flight count."""

    def __init__(self, cfg: StepConfig, metrics: Any, share: FunnelShare, collector: FunnelCollector,
                 partition_of: Callable[[str], int]) -> None:
        self.cfg = cfg
        self.partition_of = partition_of
        self.metrics = metrics
        self.share = share
        self.collector = collector  # the funnel counters of /metrics, from ``share``
        self.deadlines = PartitionedDeadlines(partition_of)
        self.expiry = DeadlineIndex()
        self.inflight = 0
        self.names = CampaignNames()  # of the owned names-table partitions (SPEC §11)

    def apply(self, key: str, fx: Effects, now_us: int) -> None:
        """Carry out one message step's effects on the derived state."""
        if fx.delta:
            self.share.apply(fx.source, fx.delta, now_us)
        for channel, vec in fx.retired:
            self.collector.retire(fx.source, fx.tenant, channel, vec)
        if fx.schedule:
            d = fx.deadline
            if d is None:
                self.deadlines.cancel(key)
            else:
                self.deadlines.schedule(key, d.deadline_us, d.stage)
        if fx.expiry_us is not None:
            self.expiry.schedule(key, fx.expiry_us, "expire")
        elif fx.delete and fx.state is None:
            self.expiry.cancel(key)
        if fx.inflight_delta:
            self.inflight += fx.inflight_delta
            self.metrics.inflight_set(self.inflight)

    def rebuild(self, items: Iterable[tuple[bytes, bytes]], owned: Callable[[str], bool], book: AlertBook) -> int:
        """Derive everything from the stored messages ``owned`` says are this worker's; the
        book's open rows follow (rows of messages no longer owned are dropped)."""
        self.share.clear()
        self.deadlines = PartitionedDeadlines(self.partition_of)
        self.expiry = DeadlineIndex()
        cfg = self.cfg
        seen: set[bytes] = set()
        n = 0
        for key, raw in items:
            if not raw:
                continue
            k = key.decode()
            if not owned(k):
                continue
            st = MessageState.from_bytes(raw)
            source, tenant, _ = split_message_key(k)
            s = summarize(source, st.events, st.campaign)
            self.share.add_summary(tenant, s, cfg.window_us, st.touched_us)
            d = pending_deadline(s, tenant, st.alerted, cfg.slas)  # marks not yet written: their check writes them
            if d is not None:
                self.deadlines.schedule(k, d.deadline_us, d.stage)
            self.expiry.schedule(k, st.touched_us + cfg.retention_us, "expire")
            book.set_open(key, book.open_from_state(key, st, s))
            seen.add(key)
            n += 1
        book.keep_open(seen.__contains__)
        self.inflight = n
        self.metrics.inflight_set(n)
        return n

    def rebuild_names(self, items: Iterable[tuple[bytes, bytes]], owned: Callable[[str], bool]) -> int:
        """The campaign names of the owned names-table partitions."""
        names = CampaignNames()
        for key, raw in items:
            if not raw:
                continue
            k = key.decode()
            if owned(k):
                tenant, campaign = split_names_key(k)
                ts, name = unpack_name(raw)
                names.note(tenant, campaign, ts, name)
        self.names = names
        return len(names.names)
