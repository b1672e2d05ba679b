"""The composition root: builds one worker's components, wires them to faust, and holds
the rebalance sequence.

=================  ====================================================================
component          owns
=================  ====================================================================
``app``            the faust app, its topics and the messages table (``agents.app``)
``commit``         offsets: what may be processed, what is done, what gets committed
``ingest``         the input topics' agents: normalize, bundle, dead letters
``lifecycle``      the events topic's agent: ``streams.step`` per message, its effects
``derived``        funnel share, deadline and expiry indexes, in-flight count
``book``/``sender``  open and suppressed stuck alerts; alerts acked before their marks
``timers``         deadline tick, ``funnel-windows`` publication
``web``            the views (``agents.web``), through a read-only ``WebDeps``
=================  ====================================================================

Faults for tests are injected by passing other component classes (``ingest_cls``,
``sender_cls``, ``commit_cls``): production code has no test hooks.
"""
from __future__ import annotations

import bisect
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry

from streams.step import StepConfig
from streams.stuck import SlaTable
from streams.timeparse import US_PER_S

from . import faust_compat, web
from .alerts import AlertBook, AlertSender, reconcile
from .app import Partitioner, build_app, campaign_names_table, internal_topics
from .clock import now_us
from .commit import CommitPoint
from .derived import DerivedState
from .expiry import ExpirySweep
from .funnel import FunnelCollector, FunnelShares
from .ingest import Ingest
from .lifecycle import Lifecycle
from .metrics import Metrics
from .metrics_worker import WorkerCollector
from .peers import Peers
from .settings import Settings
from .timers import Timers
from .windows import Windows

log = logging.getLogger("funnelwatch")


class Pipeline:
    """One worker: its faust app and components."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None, *,
                 ingest_cls: type[Ingest] = Ingest, sender_cls: type[AlertSender] = AlertSender,
                 commit_cls: type[CommitPoint] = CommitPoint) -> None:
        s = self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.app, self.topics, self.messages = build_app(s)
        self.names = campaign_names_table(self.app, s)
        self.partition_of = Partitioner(s.topic_partitions)
        self.slas = SlaTable(s.sla_s, s.tenant_sla_s)
        self.step_config = StepConfig(window_us=s.window_s * US_PER_S,
                                      retention_us=s.message_retention_s * US_PER_S, slas=self.slas)
        share = FunnelShares()
        collector = FunnelCollector(share, self._tenant_label)
        self.metrics = Metrics(self.registry, s.max_tenants_label, funnel_collector=collector)
        self.derived = DerivedState(self.step_config, self.metrics, share, collector, self.partition_of)
        t = self.topics
        self.commit = commit_cls(self.app, [t.activity_sync.get_topic_name(), t.altcraft.get_topic_name(),
                                            t.events.get_topic_name()], self.metrics, s.offset_stall_s)
        self.commit.attach()
        self.book = AlertBook(self.metrics, self.slas)
        self.sender = sender_cls(t.alerts, self.metrics)
        self.ingest = ingest_cls(self.app, t, self.commit, self.metrics, self.partition_of,
                                 max_event_bytes=s.max_event_bytes,
                                 dead_letter_ack_timeout_s=s.dead_letter_ack_timeout_s)
        self.lifecycle = Lifecycle(self.messages, self.step_config, self.derived, self.book, self.sender,
                                   self.commit, self.metrics, names_table=self.names)
        self.peers = Peers(self.app, s)
        self.windows = Windows(lambda: self.derived.share, self.peers, t.windows, s.window_retention_s, now_us,
                               lambda: self.derived.names)
        self.expiry = ExpirySweep(self._scan, retention_us=self.step_config.retention_us, sweep_s=s.expiry_sweep_s,
                                  tick_s=s.alert_tick_s)
        self.timers = Timers(self.app, t, self.commit, self.derived, self.book, self.windows, self.partition_of,
                             alert_max_lag=s.alert_max_lag, clock=now_us, expiry=self.expiry)
        self.registry.register(WorkerCollector(self.commit.lags, lambda: self.ready))
        self._assigned = False  # partitions assigned since the last revoke (faust's signals)
        self._sweep_keys: dict[int, list[bytes]] = {}  # events/table partitions owned since the last rebalance
        self._wire()

    def _wire(self) -> None:
        app, t, s = self.app, self.topics, self.settings
        def batches(topic: Any) -> Any:
            return faust_compat.deliver_in_batches(app, topic, s.batch_max_events)

        app.agent(t.activity_sync, name="ingest-activity-sync")(
            self.ingest.agent(t.activity_sync, batches(t.activity_sync)))
        app.agent(t.altcraft, name="ingest-altcraft")(self.ingest.agent(t.altcraft, batches(t.altcraft)))
        app.agent(t.events, name="lifecycle")(self.lifecycle.agent(batches(t.events)))
        app.timer(s.alert_tick_s, name="deadlines")(self.timers.tick)
        app.timer(s.publish_interval_s, name="publish-windows")(self.timers.publish_windows)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_rebalance_complete.connect(self._on_rebalance_complete)
        self.health = web.register(web.WebDeps(
            settings=s, app=app, registry=self.registry, peers=self.peers, windows=self.windows, slas=self.slas,
            window_us=self.step_config.window_us, table_name=self.messages.name,
            ingress_topic=t.altcraft.get_topic_name(), ready=lambda: self.ready, load=self.messages.get,
            open_alerts=lambda: self.book.open.values(), is_open=self.book.open.__contains__,
            inflight=lambda: self.derived.inflight, lags=self.commit.lags))

    def _tenant_label(self, tenant: str) -> str:
        return "other" if self.metrics.tenants.is_overflowing(tenant) else tenant

    @property
    def ready(self) -> bool:
        """The derived state is built and records are being processed."""
        return self.commit.accepting

    def internal_topics(self) -> dict[str, tuple[int, dict[str, str]]]:
        return internal_topics(self.settings, self.topics, self.messages, self.names)

    # ------------------------------------------------------------------ rebalance

    async def _on_revoked(self, *args: Any, **kwargs: Any) -> None:
        # Sent after faust's last commit of the revoked partitions (from the commit point).
        self.commit.reset()
        self._assigned = False

    async def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        """Every generation's assignment, also one superseded before its rebalance completes:
        which derived parts stay valid (:meth:`DerivedState.note_assignment`). faust sends it
        right after it sets up the table recovery, before that recovery can complete."""
        self._assigned = True
        topic = self.topics.events.get_topic_name()
        self.derived.note_assignment(self.app.consumer_generation_id,
                                     {tp.partition for tp in assigned if tp.topic == topic})

    async def _on_rebalance_complete(self, *args: Any, **kwargs: Any) -> None:
        """Awaited by faust before the streams resume: nothing is processed while this runs.

        1. drop the alert marks found for partitions no longer owned;
        2. re-read the alerts topic for partitions newly owned (marks lost in a crash);
        3. rebuild the derived state from the owned table partitions;
        4. accept records again.

        Not when the rebalance it completes was superseded (faust sends it also for a recovery
        a newer rebalance cut short): partitions are being revoked or a newer recovery is yet to
        restore the tables; that rebalance's own completion does the work.
        """
        if not self._assigned or faust_compat.recovery_superseded(self.app):
            log.info("funnelwatch: a superseded rebalance completed: waiting for the current one")
            return
        active = self._active_partitions()
        owned = self._owner_of(active)
        self.book.keep_published(lambda k: owned(k.decode()))
        new = active - self.derived.kept(active)  # owned throughout: their marks are all here
        if new:
            await reconcile(self.settings, self.book, alerts_topic=self.topics.alerts.get_topic_name(),
                            changelog_topic=self.messages.changelog_topic.get_topic_name(), partitions=new,
                            partition_of=self.partition_of, load=self.lifecycle.load, now_us=now_us())
        self.rebuild()
        self.commit.accepting = True

    def rebuild(self) -> None:
        """Derive the funnel share, deadline and expiry indexes and names of the newly owned
        table partitions; drop those of partitions no longer owned; keep the others."""
        active = self._active_partitions()
        t0 = time.monotonic()
        n, kept = self.derived.rebuild(active, self._items_of(self.messages), self._items_of(self.names), self.book)
        self.expiry.keep(active)
        self._sweep_keys.clear()
        log.info("funnelwatch: rebuilt derived state from %d owned messages in %.2fs (%d partitions kept as they "
                 "were) (partitions %s)", n, time.monotonic() - t0, kept, sorted(active))

    def _scan(self, partition: int, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        """A slice of ``partition``'s stored states after ``after`` (the expiry sweep's reader).
        rocksdb: read from the partition's db. Other stores: the partition's keys are listed
        once per sweep (when it starts over), values read as the slice needs them."""
        found = faust_compat.partition_slice(self.messages, partition, after, limit)
        if found is not None:
            return found
        if after is None or partition not in self._sweep_keys:
            self._sweep_keys[partition] = sorted(k for _p, k, _v in self._items_of(self.messages)({partition}))
        keys = self._sweep_keys[partition]
        i = bisect.bisect_right(keys, after) if after is not None else 0
        data = self.messages.data
        return [(k, data.get(k) or b"") for k in keys[i:i + limit]]  # b"": deleted since the listing

    def _items_of(self, table: Any) -> Any:
        """``partitions`` -> ``(partition, key, value)`` of ``table``'s entries in them."""
        return lambda partitions: faust_compat.partition_items(table, partitions, self.partition_of)

    def _owner_of(self, active: set[int]) -> Any:
        partition_of = self.partition_of
        return lambda key: partition_of(key) in active

    def _active_partitions(self) -> set[int]:
        topic = self.topics.events.get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
