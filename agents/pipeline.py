"""Faust wiring: topics, the lifecycle table, agents, timers and web views.

Thin by design: every decision is made by ``streams/``; this module moves bytes between
Kafka, the table and the domain core.

Data flow::

    activity-sync-events ─┐ ingest: normalize ─► dead-letters (rejected, original bytes)
    altcraft-action-hooks ┘        │
                                   ▼ per batch, one bundle per target partition:
                                   │ [(message key, (kind code, ts_us)...)...] (no PII)
                   <app>-lifecycle-events (internal, N partitions; + stuck-check/expiry records)
                                   │ lifecycle agent: table[key] = apply(state, events),
                                   │ one table write (changelog record) per key per batch
                                   ▼
          messages table (changelogged) ─► FunnelShare (derived) ─► /funnel, /metrics,
                                                                     funnel-windows
          deadline index ─► timer ─► stuck check (via the events topic) ─► message-alerts
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

import faust
import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import murmur2
from faust.streams import _current_event
from prometheus_client import CollectorRegistry

from streams.events import CanonicalEvent, Ignored, NonLifecycle, Rejected, split_message_key
from streams.kinds import KINDS, STAGE_RANK, STAGES, known_kind, metric_kind
from streams.lifecycle import MessageState, Summary, apply, contribution_delta, summarize
from streams.normalize import normalize
from streams.stuck import RESOLVED_SHIFT as _RESOLVED_SHIFT
from streams.stuck import DeadlineIndex, SlaTable, deadline, resolved_bit, stuck_bit
from streams.timeparse import US_PER_S, format_ts_us, parse_ts_us

from .funnel import FunnelCollector, FunnelShare, merge_windows, rows_json
from .metrics import Metrics, render
from .offsets import OffsetTracker
from .reconcile import Published, read_published
from .settings import Settings

log = logging.getLogger("funnelwatch")

OP_EVENT, OP_CHECK, OP_EXPIRE, OP_BUNDLE = 0, 1, 2, 3
_LATENCY_PAIRS = ((0, 1), (1, 2), (2, 3), (2, 4))  # queued→sent, sent→delivered, delivered→opened/clicked


class DeadLetterError(RuntimeError):
    """Dead letters Kafka would not acknowledge: the ingest agent stops instead of losing them."""


def now_us() -> int:
    return time.time_ns() // 1000


class Pipeline:
    """One worker's faust app and the state derived from its table."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.s = settings
        self.window_us = settings.window_s * US_PER_S
        self.slas = SlaTable(settings.sla_s, settings.tenant_sla_s)
        self.registry = registry or CollectorRegistry()
        self.share = FunnelShare()
        self.collector = FunnelCollector(
            self.share, lambda t: "other" if self.metrics.tenants.is_overflowing(t) else t)
        self.metrics = Metrics(self.registry, settings.max_tenants_label, funnel_collector=self.collector)
        self.deadlines = DeadlineIndex()
        self.expiry = DeadlineIndex()
        self.stuck_open: dict[bytes, dict] = {}  # key -> open stuck alert (for /alerts and the gauge)
        self.suppressed: set[tuple[bytes, str]] = set()
        self.ready = False
        self.inflight = 0
        self.offsets = OffsetTracker()  # TP -> next offset not yet processed: lag gate and commit point
        self._partition_cache: dict[str, int] = {}
        self._seeks_logged: set[tuple[Any, int]] = set()
        self._stalls_logged: set[tuple[Any, int]] = set()
        self._progress_at: dict[Any, tuple[int, float]] = {}  # TP -> (commit point, monotonic time it moved)
        self._pending_alerts: list[Any] = []
        self.published: Published = {}  # alerts found on the topic whose marks the table lacks
        self._owned: set[int] = set()  # events/table partitions owned since the last rebalance
        self.last_published: dict[tuple[int, str, str], list[int]] = {}
        self.app = self._make_app()
        self._wire()

    # ------------------------------------------------------------------ app
    def _make_app(self) -> faust.App:
        s = self.s
        app = faust.App(
            s.app_id,
            broker=s.broker_urls,
            broker_credentials=s.faust_broker_credentials(),
            # faust-streaming's `rocksdb://` store runs on rocksdict when it is installed.
            store="rocksdb://" if s.store.startswith("rocksdict:") else s.store,
            datadir=s.data_dir,
            topic_partitions=s.topic_partitions,
            topic_replication_factor=s.topic_replication_factor,
            processing_guarantee=s.processing_guarantee,
            table_standby_replicas=0,
            web_host=s.web_host,
            web_bind=s.web_host,
            web_port=s.web_port,
            canonical_url=f"http://{s.web_host}:{s.web_port}",
            web_router_enabled=s.web_enable_faust_views,
            web_tables_enabled=s.web_enable_faust_views,
            web_stats_enabled=s.web_enable_faust_views,
            web_graph_enabled=s.web_enable_faust_views,
            broker_max_poll_records=2000,
            producer_linger=s.producer_linger_s,
            producer_max_batch_size=s.producer_max_batch_bytes,
            broker_session_timeout=s.broker_session_timeout_s,
            broker_heartbeat_interval=s.broker_heartbeat_interval_s,
            stream_buffer_maxsize=8192,
            consumer_auto_offset_reset="earliest",
        )
        self.t_as = app.topic(s.topic_activity_sync, key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw", allow_empty=True)
        self.t_ac = app.topic(s.topic_altcraft, key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw", allow_empty=True)
        self.t_events = app.topic(f"{s.app_id}-lifecycle-events", partitions=s.topic_partitions, internal=True,
                                  key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.t_alerts = app.topic(s.topic_alerts, key_serializer="raw", value_serializer="raw")
        self.t_windows = app.topic(s.topic_funnel_windows, key_serializer="raw", value_serializer="raw")
        self.t_dlq = app.topic(s.topic_dead_letters, key_serializer="raw", value_serializer="raw")
        self.messages = app.Table("messages", default=None, partitions=s.topic_partitions,
                                  key_type=bytes, value_type=bytes,
                                  help="message key -> lifecycle state (applied events, alert marks)")
        # Keys and values are already bytes (MessageState.to_bytes): no json codec in the store or changelog.
        self.messages.key_serializer = self.messages.value_serializer = "raw"
        return app

    def _wire(self) -> None:
        app = self.app
        app.agent(self.t_as, name="ingest-activity-sync")(self._ingest_fn(self.t_as))
        app.agent(self.t_ac, name="ingest-altcraft")(self._ingest_fn(self.t_ac))
        app.agent(self.t_events, name="lifecycle")(self._lifecycle)
        app.timer(self.s.alert_tick_s, name="deadlines")(self._tick)
        app.timer(self.s.publish_interval_s, name="publish-windows")(self._publish_windows)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_rebalance_complete.connect(self._on_rebalance_complete)
        self.page("/metrics", self._view_metrics)
        self.page("/funnel", self._view_funnel)
        self.page("/alerts", self._view_alerts)
        self.page("/health/live", self._view_live)
        self.page("/health/ready", self._view_ready)
        from .web import register as register_web_views

        register_web_views(self)

    def internal_topics(self) -> dict[str, tuple[int, dict[str, str]]]:
        """The topics faust would create for this app: name -> (partitions, configs)."""
        n = self.s.topic_partitions
        return {self.t_events.get_topic_name(): (n, {}),
                self.messages.changelog_topic.get_topic_name(): (n, {"cleanup.policy": "compact"}),
                f"{self.s.app_id}-__assignor-__leader": (1, {})}

    def page(self, path: str, handler: Any, methods: tuple[str, ...] = ("GET",)) -> None:
        """Register a handler ``(web, request)`` as a faust web view answering ``methods``.

        Every view runs behind ``agents.web.guard``: bearer token (``web_token``; not for
        ``/health/*``, and ``/ingest/*`` checks ``ingest_token``), body cap on POST & co.
        (``max_event_bytes``, 413), extra agent/consumer checks on ``/health/*``.
        """
        from faust.web import View

        from .web import guard

        guarded = guard(self, path, handler)

        async def call(view, request, **_match_info):
            return await guarded(view, request)

        name = handler.__name__.lstrip("_")
        self.app.page(path, name=name)(type(name, (View,), {m.lower(): call for m in methods}))

    # ------------------------------------------------------------------ ingest
    def _ingest_fn(self, topic: Any):
        m = self.metrics
        max_bytes = self.s.max_event_bytes
        events_name = self.t_events.get_topic_name()
        producer_send = None
        name = topic.get_topic_name()
        batch_max, within_s = self.s.batch_max_events, self.s.batch_within_s
        partition_of = self.partition_of

        async def ingest(stream):
            nonlocal producer_send
            async for batch in stream.take_events(batch_max, within=within_s):
                if producer_send is None:
                    producer_send = self.app.producer.send
                batch = self._admit(batch)
                if not batch:
                    continue
                # Bundle: one repartition record per target partition per batch, holding every
                # message's events in order — the lifecycle agent then pays faust's per-record
                # cost once per bundle instead of once per event.
                bundles: dict[int, dict[str, list]] = {}
                dead: list[tuple[Any, tuple]] = []
                for event in batch:
                    raw = event.value if event.value is not None else b""
                    out = normalize(raw, max_bytes)
                    if type(out) is CanonicalEvent:
                        m.event(out.source, out.kind.name, True)
                        k = out.key
                        part = partition_of(k)
                        entries = bundles.get(part)
                        if entries is None:
                            entries = bundles[part] = {}
                        rec = entries.get(k)
                        if rec is None:
                            entries[k] = [k, out.kind.code, out.ts_us]
                        else:
                            rec += (out.kind.code, out.ts_us)
                    else:
                        sent = await self._ingest_other(out, raw, event.message, name)
                        if sent is not None:
                            dead.append(sent)
                for part, entries in bundles.items():
                    await producer_send(events_name, None, orjson.dumps([OP_BUNDLE, *entries.values()]),
                                        part, None, None)
                if dead:
                    await self._await_dead_letters(dead)
                await self._settle(batch)
                self._test_crash_hook(batch)
        ingest.__name__ = f"ingest_{name}"
        return ingest

    def _admit(self, batch: list) -> list:
        """The records of a batch this worker may process now.

        None while a rebalance is under way (revoked, not yet recovered): what was buffered
        is re-read from the committed offset by whoever owns the partition next. After it,
        none of a partition no longer assigned (buffered before the revoke): its new owner
        processes it; a late table write here would overwrite the owner's state.
        """
        if not self.ready:
            return []
        assigned = self.app.consumer.assignment()
        for event in batch:
            if event.message.tp not in assigned:
                batch = [e for e in batch if e.message.tp in assigned]
                break
        return self._test_drop_hook(batch)

    def _test_drop_hook(self, batch: list) -> list:
        """Overridden by agents.web when FUNNELWATCH_TEST_DROP_EVERY is set (tests only)."""
        return batch

    async def _settle(self, batch: list) -> None:
        """Account for a processed batch (``agents.offsets``): advance each partition's commit
        point over the records done in order; re-read from a hole faust skipped."""
        per_tp: dict[Any, list[int]] = {}
        for event in batch:
            msg = event.message
            offs = per_tp.get(msg.tp)
            if offs is None:
                per_tp[msg.tp] = [msg.offset]
            else:
                offs.append(msg.offset)
        offsets = self.offsets
        for tp, offs in per_tp.items():
            if not offsets.knows(tp):
                start = await self._start_offset(tp)
                if start is not None:
                    offsets.start(tp, start)
            out = offsets.observe(tp, offs)
            for a, b in out.accepted:
                self.metrics.gap_accepted(tp.topic)
                log.warning("funnelwatch: %s/%d has no records at offsets %d..%d (skipped again after re-reads: "
                            "transaction markers or retention): moving on", tp.topic, tp.partition, a, b - 1)
            if out.seek_to is not None:
                await self._reread(tp, out.seek_to, self._seeks_logged, "records from offset %d were skipped "
                                   f"(got {_first_past(offs, out.seek_to)}): re-reading them")

    async def _unstall(self) -> None:
        """Re-read partitions whose commit point is stuck below the records waiting.

        A hole shows when a later record arrives; if faust dropped a partition's *last*
        records, none does. Run by the deadline timer: a partition with records past its
        commit point that has not moved for ``offset_stall_s`` is re-read from it.
        """
        now = time.monotonic()
        consumer = self.app.consumer
        for tp, nxt in list(self.offsets.next.items()):
            seen = self._progress_at.get(tp)
            if seen is None or seen[0] != nxt:
                self._progress_at[tp] = (nxt, now)
                continue
            if now - seen[1] < self.s.offset_stall_s:
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
                tp.topic, tp.partition, offset)
        try:
            await self.app.consumer.seek(tp, offset)
        except Exception as exc:  # noqa: BLE001 - revoked meanwhile: its next owner reads it
            log.warning("funnelwatch: could not seek %s/%d back to %d: %r", tp.topic, tp.partition, offset, exc)

    async def _start_offset(self, tp: Any) -> int | None:
        """Where this generation's processing of ``tp`` starts: the group's committed offset,
        else the log start (``auto_offset_reset=earliest``); None if the broker can't say."""
        consumer = self.app.consumer
        committed = consumer._committed_offset.get(tp)
        if committed is not None:
            return committed
        try:
            thread = consumer._thread
            ak = thread._ensure_consumer()
            atp = TopicPartition(tp.topic, tp.partition)
            committed = await thread.call_thread(ak.committed, atp)
            if committed is None or committed < 0:
                committed = (await thread.call_thread(ak.beginning_offsets, [atp]))[atp]
            return committed
        except Exception as exc:  # noqa: BLE001 - then the first record processed is the start
            log.warning("funnelwatch: no start offset for %s/%d: %r", tp.topic, tp.partition, exc)
            return None

    def _take_over_commits(self) -> None:
        """Commit input and events offsets from :attr:`offsets` alone, not from faust's acks.

        faust acks records its stream skipped and books offset jumps as compaction gaps
        (``Consumer._new_offset``): it would commit past records no agent processed. Its
        ack bookkeeping still runs (kept bounded); the offset it commits is ours, and a
        partition whose commit point moved is committed even without new acks.
        """
        consumer = self.app.consumer
        if getattr(consumer, "_funnelwatch_commits", False):
            return
        tracked = {self.t_as.get_topic_name(), self.t_ac.get_topic_name(), self.t_events.get_topic_name()}
        nxt = self.offsets.next
        committed = consumer._committed_offset
        faust_new_offset = consumer._new_offset
        faust_pending = consumer._filter_tps_with_pending_acks

        def new_offset(tp: Any) -> int | None:
            offset = faust_new_offset(tp)
            return nxt.get(tp) if tp.topic in tracked else offset

        def pending(topics: Any = None) -> Any:
            tps = list(faust_pending(topics))
            listed = set(tps)
            for tp, n in list(nxt.items()):
                if tp in listed or not (topics is None or tp in topics or tp.topic in topics):
                    continue
                c = committed.get(tp)
                if c is None or n > c:
                    tps.append(tp)
            return iter(tps)

        consumer._new_offset = new_offset
        consumer._filter_tps_with_pending_acks = pending
        consumer._funnelwatch_commits = True

    def _test_crash_hook(self, batch) -> None:
        """Overridden by agents.web when FUNNELWATCH_TEST_CRASH_KIND is set (tests only)."""

    def _test_alerts_acked_hook(self) -> None:
        """Overridden by agents.web when FUNNELWATCH_TEST_EXIT_AFTER_ALERTS is set (tests only)."""

    async def _await_dead_letters(self, sent: list[tuple[Any, tuple]]) -> None:
        """Dead letters are acked before their records count as processed: never lost silently.

        Not yet acked (broker down, leader moving): keep waiting, with a warning every
        ``dead_letter_ack_timeout_s`` — the records stay uncommitted meanwhile, as every
        other output of the batch would. Failed with a transient error (timeouts, leader
        changes): sent again. Failed for good (e.g. record too large, not authorized) three
        times: the agent crashes (logged, ``/health/live`` 503) rather than commit past it.
        """
        permanent_failures = 0
        waited_s = 0.0
        while True:
            _, pending = await asyncio.wait([f for f, _ in sent], timeout=self.s.dead_letter_ack_timeout_s)
            failed = [(f, args) for f, args in sent if f not in pending and f.exception() is not None]
            if not pending and not failed:
                return
            if pending:
                waited_s += self.s.dead_letter_ack_timeout_s
            errors = [f.exception() for f, _ in failed]
            if any(not _transient(e) for e in errors):
                permanent_failures += 1
                if permanent_failures >= 3:
                    raise DeadLetterError(f"{len(failed)} dead letter(s) failed 3 times: {errors[0]!r}")
            log.warning("funnelwatch: dead letters: %d not acknowledged after %.0fs, %d failed (%s): %s",
                        len(pending), waited_s, len(failed), repr(errors[0]) if errors else "-",
                        "sending the failed ones again" if failed else "waiting")
            resent = [(await self.t_dlq.send(key=k, value=v, headers=h), (k, v, h)) for _, (k, v, h) in failed]
            sent = [(f, args) for f, args in sent if f in pending] + resent

    async def _ingest_other(self, out: Any, raw: bytes, msg: Any, topic_name: str) -> tuple[Any, tuple] | None:
        """Dead-letter, count or alert a record that is not a lifecycle event; a dead letter's
        send future (and what to send again) is returned for the batch to await."""
        m = self.metrics
        if type(out) is Rejected:
            src = out.source or "unknown"
            if out.source is not None:
                m.event(src, metric_kind(src, out.kind), known_kind(src, out.kind))
            m.rejected(src, out.reason)
            headers = [
                ("dlq.reason", out.reason.encode()),
                ("dlq.source.topic", topic_name.encode()),
                ("dlq.source.partition", str(msg.partition).encode()),
                ("dlq.source.offset", str(msg.offset).encode()),
                ("dlq.error", out.error.encode()),
            ]
            return await self.t_dlq.send(key=msg.key, value=raw, headers=headers), (msg.key, raw, headers)
        elif type(out) is NonLifecycle:
            m.event(out.source, metric_kind(out.source, out.kind), True)
            if out.alert is not None:
                alert = dict(out.alert)
                alert.pop("event_ts_us", None)
                alert["detected_at"] = format_ts_us(now_us())
                await self.t_alerts.send(key=f"campaign|{alert['tenant']}|{alert['campaign_id']}".encode(),
                                         value=orjson.dumps(alert))
                m.alert("campaign_error")
        elif type(out) is Ignored:
            m.event(out.source, metric_kind(out.source, out.kind), True)
            m.ignored(out.source, out.reason)
        else:  # pragma: no cover - a new outcome type is a bug, crash loudly
            raise TypeError(f"unhandled outcome {type(out).__name__}")
        return None

    # ------------------------------------------------------------------ lifecycle
    async def _lifecycle(self, stream):
        async for batch in stream.take_events(self.s.batch_max_events, within=self.s.batch_within_s):
            batch = self._admit(batch)
            if not batch:
                continue
            # key -> [(op, event)]: bundles are unpacked; every entry of a bundle belongs to the
            # bundle's partition, as do the check/expire records keyed by message key.
            groups: dict[bytes, list] = {}
            for event in batch:
                op = orjson.loads(event.value)
                if op[0] == OP_BUNDLE:
                    for entry in op[1:]:
                        key = entry[0].encode()
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
            writes: list[tuple[bytes, bytes, Any]] = []
            for key, ops in groups.items():
                _current_event.set(weakref.ref(ops[-1][1]))  # an expiry deletes in this key's partition
                state = await self._on_key_batch(key, ops)
                if state is not None:
                    writes.append((key, state.to_bytes(), ops[-1][1]))
            if self._pending_alerts:
                # Alerts are acked before the state marks that record them land (see
                # _send_alert_acked): a crash never loses one; marks it loses are re-read.
                await asyncio.gather(*self._pending_alerts)
                self._pending_alerts.clear()
                self._test_alerts_acked_hook()
            for key, value, event in writes:
                # Table writes go to the changelog partition of the "current event": make it this
                # key's own record (take_events leaves it at the batch's last event).
                _current_event.set(weakref.ref(event))
                self.messages[key] = value
            _current_event.set(None)
            await self._settle(batch)

    async def _on_key_batch(self, key: bytes, ops: list) -> MessageState | None:
        """Apply every op of one key in this batch; the state to write (one changelog record), if any."""
        state = self._load(key)
        dirty = state is not None and key in self.published and self._merge_published(key, state)
        for op, _event in ops:
            kind = op[0]
            if type(kind) is str or kind == OP_EVENT:  # bundle entry [key, code, ts, ...] or [0, code, ts]
                for i in range(1, len(op), 2):
                    state, changed = await self._on_event(key, state, op[i], op[i + 1])
                    dirty |= changed
            elif kind == OP_CHECK:
                if state is not None:
                    dirty |= await self._on_check(key, state, op[1])
            elif kind == OP_EXPIRE:
                if state is not None and self._on_expire(key, state):
                    state, dirty = None, False
        return state if dirty else None

    def partition_of(self, key: str) -> int:
        """Partition of the internal topic (and table) that owns a message key (cached)."""
        cache = self._partition_cache
        p = cache.get(key)
        if p is None:
            if len(cache) > 200_000:
                cache.clear()
            # The producer's default partitioner (murmur2, as Kafka's Java client), computed without
            # waiting for topic metadata: the internal topic has `topic_partitions` partitions.
            p = cache[key] = (murmur2(key.encode()) & 0x7FFFFFFF) % self.s.topic_partitions
        return p

    def _load(self, key: bytes) -> MessageState | None:
        raw = self.messages.get(key)
        return MessageState.from_bytes(raw) if raw else None

    async def _on_event(self, key: bytes, state: MessageState | None, code: int,
                        ts_us: int) -> tuple[MessageState | None, bool]:
        source, tenant, mid = split_message_key(key.decode())
        ev = CanonicalEvent(source, tenant, mid, KINDS[code], ts_us)
        now = now_us()
        res = apply(state, ev, window_us=self.window_us, now_us=now)
        m = self.metrics
        if res.duplicate:
            m.duplicate(source)
            return state, False
        new = res.new
        assert new is not None
        if state is None:
            self.inflight += 1
            m.inflight_set(self.inflight)
            m.tenants.label(tenant, "funnel_stage_reached_total")  # admit, or count the overflow once
        self.share.apply(source, res.delta, now)
        if res.out_of_order:
            m.out_of_order()
        if res.moved or ts_us < now - self.window_us:
            m.late_event()
        if res.new_conflict:
            m.conflicting_outcome()
        for a, b in _LATENCY_PAIRS:
            if b in res.new_stages and a in new.reached and new.reached[b] >= new.reached[a]:
                m.latency(new.channel, STAGES[a], STAGES[b], (new.reached[b] - new.reached[a]) / US_PER_S)
        st = res.state
        if state is None and key in self.published:
            self._merge_published(key, st, new)
        await self._maybe_resolve(key, tenant, mid, st, new, now)
        self._schedule(key, tenant, st, new)
        return st, True

    def _schedule(self, key: bytes, tenant: str, st: MessageState, s: Summary) -> None:
        d = deadline(s, tenant, self.slas)
        k = key.decode()
        if d is not None and not st.alerted & (1 << STAGE_RANK[d.stage]):
            self.deadlines.schedule(k, d.deadline_us, d.stage)
        else:
            self.deadlines.cancel(k)
        self.expiry.schedule(k, st.touched_us + self.s.message_retention_s * US_PER_S, "expire")

    async def _maybe_resolve(self, key: bytes, tenant: str, mid: str, st: MessageState, s: Summary, now: int) -> None:
        for rank in (0, 1):
            if st.alerted & (1 << rank) and not st.alerted & (1 << (rank + _RESOLVED_SHIFT)):
                if s.highest > rank or s.failure_seen:
                    resolved_stage = "failed" if s.failed else STAGES[s.highest]
                    opened = self.stuck_open.pop(key, None)
                    if opened is not None:
                        self.metrics.stuck_dec(tenant, opened["channel"], opened["stage"])
                    at = s.failed_at if s.failed and s.failed_at is not None else s.reached.get(s.highest, now)
                    since = s.reached.get(rank)
                    alert = {"type": "resolved", "source": s.source, "tenant": tenant, "channel": s.channel,
                             "message_id": mid, "stage": STAGES[rank],
                             "since": format_ts_us(since) if since is not None else None,
                             "resolved_stage": resolved_stage, "resolved_at": format_ts_us(at),
                             "time_to_resolve_s": (at - since) / US_PER_S if since is not None else None,
                             "detected_at": format_ts_us(now)}
                    await self._send_alert_acked(key, alert)
                    self.metrics.alert("resolved")
                    st.alerted |= 1 << (rank + _RESOLVED_SHIFT)
                    self.suppressed.discard((key, STAGES[rank]))

    async def _send_alert_acked(self, key: bytes, alert: dict) -> None:
        """Send an alert; the batch waits for Kafka's acks *before* writing the state marks.

        The mark travels in the table's changelog; were it to land while the alert was still in
        the producer's buffer, a crash would lose the alert for good. Acked first, a crash can
        only lose the mark (between the ack and the changelog write: milliseconds), which the
        next owner takes back from the alerts topic (``_reconcile``) instead of alerting again.
        """
        self._pending_alerts.append(await self.t_alerts.send(key=key, value=orjson.dumps(alert)))

    async def _on_check(self, key: bytes, st: MessageState, rank: int) -> bool:
        """A due deadline came back through the message's partition: alert once if still stuck."""
        if st.alerted & (1 << rank):
            return False
        source, tenant, mid = split_message_key(key.decode())
        s = summarize(source, st.events)
        d = deadline(s, tenant, self.slas)
        now = now_us()
        if d is None or STAGE_RANK[d.stage] != rank:
            return False
        if now <= d.deadline_us:
            self.deadlines.schedule(key.decode(), d.deadline_us, d.stage)
            return False
        alert = {"type": "stuck", "source": source, "tenant": tenant, "channel": s.channel, "message_id": mid,
                 "stage": d.stage, "since": format_ts_us(d.since_us), "deadline": format_ts_us(d.deadline_us),
                 "detected_at": format_ts_us(now), "sla_seconds": d.sla_s}
        await self._send_alert_acked(key, alert)
        st.alerted |= 1 << rank
        self.metrics.alert("stuck")
        self.metrics.stuck_inc(tenant, s.channel, d.stage)
        self.stuck_open[key] = alert
        return True

    def _on_expire(self, key: bytes, st: MessageState) -> bool:
        """Delete the state if it is past retention (True), else re-arm its expiry."""
        now = now_us()
        retention_us = self.s.message_retention_s * US_PER_S
        if now - st.touched_us <= retention_us:
            self.expiry.schedule(key.decode(), st.touched_us + retention_us, "expire")
            return False
        source, tenant, _ = split_message_key(key.decode())
        s = summarize(source, st.events)
        self.share.apply(source, contribution_delta(tenant, self.window_us, s, None), now)
        self.collector.retire(source, tenant, s.channel, s.vector())
        self.messages.pop(key, None)
        self.deadlines.cancel(key.decode())
        for stage in ("queued", "sent"):
            self.suppressed.discard((key, stage))
        opened = self.stuck_open.pop(key, None)
        if opened is not None:
            self.metrics.stuck_dec(tenant, opened["channel"], opened["stage"])
        self.inflight -= 1
        self.metrics.inflight_set(self.inflight)
        return True

    # ------------------------------------------------------------------ timers
    def _lag(self, tp) -> int:
        """Records not yet *processed* (not merely buffered) in an assigned partition."""
        consumer = self.app.consumer
        try:
            hw = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not assigned (yet): treat as lagging
            return 1 << 62
        if hw is None:
            return 0
        nxt = self.offsets.next.get(tp)
        if nxt is not None:
            return max(0, hw - nxt)
        committed = consumer._committed_offset.get(tp)  # next offset to read, as committed
        return max(0, hw - (committed or 0))

    def _input_lag(self) -> int:
        names = {self.t_as.get_topic_name(), self.t_ac.get_topic_name()}
        return sum(self._lag(tp) for tp in self.app.consumer.assignment() if tp.topic in names)

    async def _tick(self) -> None:
        if not self.ready:
            return
        await self._unstall()
        now = now_us()
        due = self.deadlines.pop_due(now)
        if due:
            from faust.types import TP
            in_recovery = bool(getattr(self.app, "in_recovery", False))
            input_lag = self._input_lag()
            topic = self.t_events.get_topic_name()
            lags: dict[int, int] = {}  # one snapshot per tick: this tick's own checks don't count
            for k, stage, d in due:
                kb = k.encode()
                part = self.partition_of(k)
                lag = lags.get(part)
                if lag is None:
                    lag = lags[part] = self._lag(TP(topic, part)) + input_lag
                if in_recovery or lag > self.s.alert_max_lag:
                    if (kb, stage) not in self.suppressed:
                        self.suppressed.add((kb, stage))
                        self.metrics.alert_suppressed()
                    self.deadlines.schedule(k, d, stage)  # retried next tick, once caught up
                    continue
                self.suppressed.discard((kb, stage))
                await self._send_control(k, [OP_CHECK, STAGE_RANK[stage]])
        for k, _stage, _d in self.expiry.pop_due(now, limit=10000):
            await self._send_control(k, [OP_EXPIRE])

    async def _send_control(self, key: str, op: list) -> None:
        """A control record on the message's own partition (the same function places its events)."""
        await self.app.producer.send(self.t_events.get_topic_name(), key.encode(), orjson.dumps(op),
                                     self.partition_of(key), None, None)

    async def _publish_windows(self) -> None:
        """Publish changed funnel rows (coalesced) from the owner of events partition 0."""
        if not self.ready or not self._owns_partition0():
            return
        try:
            windows = await self.gather_windows({})
        except Exception as exc:  # noqa: BLE001 - a peer is down or rebalancing: try next interval
            log.warning("funnel-windows publish skipped: %s", exc)
            return
        for k, vec in sorted(windows.items()):
            if self.last_published.get(k) == vec:
                continue
            row = rows_json({k: vec})[0] if vec[0] else None
            key = f"{row['window_start'] if row else format_ts_us(k[0])}|{k[1]}|{k[2]}".encode()
            await self.t_windows.send(key=key, value=orjson.dumps(row) if row else None)
            self.last_published[k] = vec
        for k in list(self.last_published):
            if k not in windows:  # dropped (retention or expiry): tombstone for compacted consumers
                await self.t_windows.send(key=f"{format_ts_us(k[0])}|{k[1]}|{k[2]}".encode(), value=None)
                del self.last_published[k]

    def _retention_floor_us(self) -> int:
        """Rows unchanged since before this (processing time) are past `window_retention`."""
        return now_us() - self.s.window_retention_s * US_PER_S

    def _owns_partition0(self) -> bool:
        topic = self.t_events.get_topic_name()
        return any(tp.topic == topic and tp.partition == 0 for tp in self.app.assignor.assigned_actives())

    # ------------------------------------------------------------------ rebalance
    async def _on_revoked(self, *args: Any, **kwargs: Any) -> None:
        # Sent after faust's last commit of the revoked partitions (from self.offsets).
        self.ready = False
        self.offsets.reset()
        self._progress_at.clear()

    async def _on_rebalance_complete(self, *args: Any, **kwargs: Any) -> None:
        # Awaited by faust before the streams resume: nothing is processed while this runs.
        self._take_over_commits()
        active = self._active_partitions()
        self.published = {k: v for k, v in self.published.items() if self.partition_of(k.decode()) in active}
        if active - self._owned:
            await self._reconcile(active - self._owned)
        self._owned = active
        self.rebuild()
        self.ready = True

    def _active_partitions(self) -> set[int]:
        topic = self.t_events.get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    async def _reconcile(self, parts: set[int]) -> None:
        """Take back the marks of alerts acked just before the previous owner died (see agents.reconcile)."""
        t0 = time.monotonic()
        try:
            found = await read_published(
                self.s, alerts_topic=self.t_alerts.get_topic_name(),
                changelog_topic=self.messages.changelog_topic.get_topic_name(),
                partitions=parts, partition_of=self.partition_of, now_us=now_us())
        except Exception as exc:  # noqa: BLE001 - broker trouble: alerts may repeat, none is lost
            self.metrics.alert_reconcile_failed()
            log.warning("funnelwatch: could not re-read alerts for partitions %s (alerts may repeat): %r",
                        sorted(parts), exc)
            return
        n = 0
        for key, bits in found.items():
            st = self._load(key)  # None: expired, or its first write was lost (re-processing re-creates it)
            missing = {b: a for b, a in bits.items() if st is None or not st.alerted & b}
            if missing:
                self.published.setdefault(key, {}).update(missing)
                n += len(missing)
        log.info("funnelwatch: alerts re-read for partitions %s in %.2fs: %d alerts, %d not marked in the table",
                 sorted(parts), time.monotonic() - t0, sum(len(b) for b in found.values()), n)

    def _merge_published(self, key: bytes, st: MessageState, s: Summary | None = None) -> bool:
        """Set the marks of alerts found on the topic (the state is then written); True if any was new."""
        bits = self.published.pop(key, None) or {}
        new = {bit: alert for bit, alert in bits.items() if not st.alerted & bit}
        if not new:
            return False
        for bit, alert in new.items():
            st.alerted |= bit
            self.metrics.alert_marks_reconciled(alert["type"])
        if s is None:
            s = summarize(split_message_key(key.decode())[0], st.events)
        self._track_open(key, st, s)
        return True

    def _track_open(self, key: bytes, st: MessageState, s: Summary) -> None:
        """List the message as stuck (``/alerts``, gauge) if its current stage was alerted and not resolved."""
        if key in self.stuck_open:
            return
        source, tenant, mid = split_message_key(key.decode())
        d = deadline(s, tenant, self.slas)
        if d is None:
            return
        rank = STAGE_RANK[d.stage]
        if st.alerted & stuck_bit(rank) and not st.alerted & resolved_bit(rank):
            self.stuck_open[key] = {"type": "stuck", "source": source, "tenant": tenant,
                                    "channel": s.channel, "message_id": mid, "stage": d.stage,
                                    "since": format_ts_us(d.since_us), "deadline": format_ts_us(d.deadline_us),
                                    "detected_at": None, "sla_seconds": d.sla_s}
            self.metrics.stuck_inc(tenant, s.channel, d.stage)

    def rebuild(self) -> None:
        """Derive the funnel share, deadline and expiry indexes from the owned table partitions."""
        active = self._active_partitions()
        self.share.clear()
        self.deadlines = DeadlineIndex()
        self.expiry = DeadlineIndex()
        for key, opened in list(self.stuck_open.items()):
            self.metrics.stuck_dec(opened["tenant"], opened["channel"], opened["stage"])
        self.stuck_open.clear()
        n = 0
        for key, raw in list(self.messages.data.items()):
            if not raw or self.partition_of(key.decode()) not in active:
                continue
            st = MessageState.from_bytes(raw)
            source, tenant, _ = split_message_key(key.decode())
            s = summarize(source, st.events)
            self.share.add_summary(tenant, s, self.window_us, st.touched_us)
            self._schedule(key, tenant, st, s)  # marks not yet written: their check writes them
            bits = self.published.get(key)
            if bits:  # listed as stuck if the topic says so, even before the mark lands
                st.alerted |= sum(bits)
            self._track_open(key, st, s)
            n += 1
        self.inflight = n
        self.metrics.inflight_set(n)
        log.info("funnelwatch: rebuilt derived state from %d owned messages (partitions %s)", n, sorted(active))

    # ------------------------------------------------------------------ web
    def _peers(self) -> list[str]:
        me = str(self.app.conf.canonical_url).rstrip("/")
        hosts = {str(h).rstrip("/") for h in self.app.router.tables_metadata()}
        return sorted(h for h in hosts if h != me)

    async def _gather_peers(self, path: str, params: dict[str, str]) -> list[dict]:
        """GET ``path?local=1`` on every other worker (scatter-gather); raises if one fails."""
        peers = self._peers()
        if not peers:
            return []
        import aiohttp

        params = dict(params, local="1")
        headers = {}
        if self.s.web_token is not None:
            headers["Authorization"] = f"Bearer {self.s.web_token.get_secret_value()}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async def one(url: str) -> dict:
                async with http.get(f"{url}{path}", params=params, headers=headers) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"peer {url} answered {resp.status}")
                    return await resp.json()
            return list(await asyncio.gather(*(one(u) for u in peers)))

    async def gather_windows(self, query: dict[str, str]) -> dict[tuple[int, str, str], list[int]]:
        params = {k: v for k, v in query.items() if k in ("tenant", "channel", "from", "to")}
        parts = [self.share.windows(**_filters(query), min_touched_us=self._retention_floor_us())]
        for body in await self._gather_peers("/funnel", params):
            parts.append({(parse_ts_us(r["window_start"]), r["tenant"], r["channel"]): [r[f] for f in _FIELDS]
                          for r in body["windows"]})
        return merge_windows(parts)

    def lags(self) -> dict[str, int]:
        return {f"{tp.topic}/{tp.partition}": self._lag(tp) for tp in sorted(self.app.consumer.assignment())
                if not tp.topic.endswith("-changelog")}

    async def _view_live(self, web, request):
        """Process and event loop alive, and no agent has crashed (faust issues #175/#523)."""
        crashed = [a.name for a in self.app.agents.values()
                   if any(getattr(act, "crashed", False) for act in getattr(a, "_actors", ()))
                   or getattr(a, "crashed", False)]
        body = {"live": not crashed, "crashed_agents": crashed}
        return web.json(body, status=200 if not crashed else 503)

    async def _view_ready(self, web, request):
        in_recovery = bool(getattr(self.app, "in_recovery", False))
        ok = self.ready and not in_recovery
        return web.json({"ready": ok, "derived_state_ready": self.ready, "in_recovery": in_recovery,
                         "lag": self.lags()}, status=200 if ok else 503)

    async def _view_metrics(self, web, request):
        body, ctype = render(self.registry, request.headers.get("Accept"))
        return web.bytes(body, content_type=ctype.split(";")[0])

    async def _view_funnel(self, web, request):
        q = dict(request.query)
        try:
            _filters(q)
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        if not self.ready:
            return web.json({"error": "worker is rebalancing or recovering; retry"}, status=503)
        if q.get("local") == "1":
            return web.json({"windows": rows_json({k: v for k, v in self.share.windows(
                **_filters(q), min_touched_us=self._retention_floor_us()).items()}),
                             "partial": True})
        try:
            windows = await self.gather_windows(q)
        except Exception as exc:  # noqa: BLE001
            return web.json({"error": f"funnel incomplete: {exc}"}, status=503)
        return web.json({"windows": rows_json(windows)})

    async def _view_alerts(self, web, request):
        """Currently stuck messages across all workers, newest first, filtered and paginated."""
        q = request.query
        try:
            limit = min(max(int(q.get("limit", 100)), 1), 1000)
            offset = max(int(q.get("offset", 0)), 0)
        except ValueError:
            return web.json({"error": "limit and offset must be integers"}, status=400)
        flt = {f: q[f] for f in ("tenant", "channel", "stage") if q.get(f)}
        rows = [r for r in self.stuck_open.values() if all(r.get(f) == v for f, v in flt.items())]
        if q.get("local") == "1":
            return web.json({"alerts": rows})
        if not self.ready:
            return web.json({"error": "worker is rebalancing or recovering; retry"}, status=503)
        try:
            for body in await self._gather_peers("/alerts", flt):
                rows.extend(body["alerts"])
        except Exception as exc:  # noqa: BLE001
            return web.json({"error": f"alerts incomplete: {exc}"}, status=503)
        rows.sort(key=lambda a: (a["deadline"], a["source"], a["tenant"], a["message_id"]), reverse=True)
        return web.json({"total": len(rows), "offset": offset, "limit": limit,
                         "alerts": rows[offset:offset + limit]})


_FIELDS = ("entered", "queued", "sent", "delivered", "opened", "clicked", "failed",
           "soft_bounced", "complained", "unsubscribed", "opens_total", "clicks_total")


def _filters(q: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"tenant": q.get("tenant") or None, "channel": q.get("channel") or None,
                           "from_us": None, "to_us": None}
    for name, field in (("from", "from_us"), ("to", "to_us")):
        if q.get(name):
            v = parse_ts_us(q[name])
            if v is None:
                raise ValueError(f"query parameter {name!r} must be an RFC 3339 timestamp with zone")
            out[field] = v
    return out


def _first_past(offsets: list[int], hole: int) -> int | None:
    return next((o for o in offsets if o > hole), None)


def _transient(exc: BaseException | None) -> bool:
    """A send error worth retrying: timeouts and errors Kafka marks retriable."""
    return isinstance(exc, (KafkaTimeoutError, asyncio.TimeoutError, ConnectionError)) or bool(
        getattr(exc, "retriable", False))
