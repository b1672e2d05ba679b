"""The faust app and its topics and table: construction only, no behaviour.

Data flow::

    activity-sync-events ─┐ ingest: normalize ─► dead-letters (rejected, original bytes)
    altcraft-action-hooks ┘        │
                                   ▼ per batch, one bundle per target partition:
                                   │ [OP_BUNDLE_CAMPAIGNS, [[names key, ts_us, name], ...],
                                   │  [message key, kind code, ts_us, campaign, ...], ...] (no PII)
                   <app>-lifecycle-events (internal, N partitions; + stuck-check/expiry records)
                                   │ lifecycle agent: streams.step per key per batch,
                                   │ one table write (changelog record) per key per batch
                                   ▼
          messages table (changelogged) ─► derived state (funnel share, deadline/expiry
                                           indexes) ─► /funnel, /metrics, funnel-windows
          campaign-names table (changelogged, keyed tenant|campaign) ─► /funnel?by=campaign
          deadline index ─► timer ─► stuck check (via the events topic) ─► message-alerts
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka.partitioner import murmur2

from .faust_compat import WorkerApp, batched_table, install_commit_transport
from .http import json_errors_middleware
from .logjson import logging_config
from .settings import Settings

OP_BUNDLE = 3  # a record of the events topic holding many messages' events (streams.step has the rest)
# The same, with each event's campaign and the campaign names of the bundle's partition (SPEC §11);
# what ingest writes. OP_BUNDLE records (written before SPEC §11) are still read.
OP_BUNDLE_CAMPAIGNS = 4


@dataclass(frozen=True)
class Topics:
    activity_sync: Any
    altcraft: Any
    events: Any  # <app>-lifecycle-events (internal)
    alerts: Any
    windows: Any
    dead_letters: Any

    @property
    def inputs(self) -> tuple[Any, Any]:
        return (self.activity_sync, self.altcraft)


def faust_settings(s: Settings) -> dict[str, Any]:
    """The faust app settings of a worker (also those of the bench's faust floor app)."""
    return dict(
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
        **{f"web_{view}_enabled": s.web_enable_faust_views for view in ("router", "tables", "stats", "graph")},
        broker_max_poll_records=2000,
        producer_linger=s.producer_linger_s,
        producer_max_batch_size=s.producer_max_batch_bytes,
        broker_session_timeout=s.broker_session_timeout_s,
        broker_heartbeat_interval=s.broker_heartbeat_interval_s,
        stream_buffer_maxsize=8192,
        consumer_auto_offset_reset="earliest",
    )


def build_app(s: Settings) -> tuple[WorkerApp, Topics, Any]:
    """``(app, topics, messages table)`` for ``s``; the consumer commits from a commit point."""
    app = WorkerApp(
        s.app_id,
        **faust_settings(s),
        web_application_options={"middlewares": [json_errors_middleware()]},
        logging_config=logging_config(s.log_format),
    )
    install_commit_transport(app, fetch_max_wait_ms=s.fetch_max_wait_ms)
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    topics = Topics(
        activity_sync=app.topic(s.topic_activity_sync, key_type=bytes, value_type=bytes, allow_empty=True, **raw),
        altcraft=app.topic(s.topic_altcraft, key_type=bytes, value_type=bytes, allow_empty=True, **raw),
        events=app.topic(f"{s.app_id}-lifecycle-events", partitions=s.topic_partitions, internal=True,
                         key_type=bytes, value_type=bytes, **raw),
        alerts=app.topic(s.topic_alerts, **raw),
        windows=app.topic(s.topic_funnel_windows, **raw),
        dead_letters=app.topic(s.topic_dead_letters, **raw),
    )
    messages = batched_table(app, "messages", default=None, partitions=s.topic_partitions, key_type=bytes,
                             value_type=bytes, help="message key -> lifecycle state (applied events, alert marks)")
    # Keys and values are already bytes (MessageState.to_bytes): no json codec in the store or changelog.
    messages.key_serializer = messages.value_serializer = "raw"
    return app, topics, messages


def campaign_names_table(app: Any, s: Settings) -> Any:
    """``tenant|campaign`` -> name (SPEC §11), in the partition of its key (as the events
    topic's records that carry it); value ``streams.campaigns`` ``pack_name``."""
    names = batched_table(app, "campaign-names", default=None, partitions=s.topic_partitions, key_type=bytes,
                          value_type=bytes, help="tenant|campaign -> (timestamp, name) of the event naming it")
    names.key_serializer = names.value_serializer = "raw"
    return names


def internal_topics(s: Settings, topics: Topics, *tables: Any) -> dict[str, tuple[int, dict[str, str]]]:
    """The topics faust would create for this app: name -> (partitions, configs)."""
    n = s.topic_partitions
    out = {topics.events.get_topic_name(): (n, {})}
    for table in tables:
        out[table.changelog_topic.get_topic_name()] = (n, {"cleanup.policy": "compact"})
    out[f"{s.app_id}-__assignor-__leader"] = (1, {})
    return out


class Partitioner:
    """Partition of the internal topic (and table) that owns a message key, cached.

    The producer's default partitioner (murmur2, as Kafka's Java client), computed without
    waiting for topic metadata: the internal topic has ``topic_partitions`` partitions.
    """

    __slots__ = ("n", "_cache")

    def __init__(self, partitions: int) -> None:
        self.n = partitions
        self._cache: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        cache = self._cache
        p = cache.get(key)
        if p is None:
            if len(cache) > 200_000:
                cache.clear()
            p = cache[key] = (murmur2(key.encode()) & 0x7FFFFFFF) % self.n
        return p
