"""Alert marks lost in a crash, taken back from the alerts topic after a takeover.

An alert's mark (``MessageState.alerted``) is written to the table only once Kafka acked
the alert, so a crash can never lose an alert; it can lose the *mark* of an alert acked in
the last moments (the changelog write still in the producer's buffer). The next owner of
the partition would then alert again. So before a worker resumes partitions it did not own
before, it reads the alerts topic back from shortly before each partition's last changelog
write (``streams.stuck.reconcile_from_us``) and treats what it finds as marked.

Reads use a plain aiokafka consumer without a group (nothing is committed), bounded by
``alert_reconcile_timeout_s``.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Callable, Iterable

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.stuck import alert_mark, reconcile_from_us
from streams.timeparse import US_PER_S

from .faust_compat import fetch_all_metadata
from .settings import Settings

log = logging.getLogger("funnelwatch")

US_PER_MS = 1000
# Records read back at the end of a changelog partition to find its last write's timestamp
# (the very last offset can be a transaction marker under exactly_once).
_CHANGELOG_TAIL = 32

Published = dict[bytes, dict[int, dict[str, Any]]]  # message key -> alerted bit -> alert record


async def read_published(settings: Settings, *, alerts_topic: str, changelog_topic: str,
                         partitions: Iterable[int], partition_of: Callable[[str], int],
                         now_us: int) -> Published:
    """Stuck/resolved alerts on ``alerts_topic`` for keys of ``partitions``, sent since the
    reconcile start of their partition. Raises on broker errors or after the timeout."""
    parts = set(partitions)
    if not parts:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=None, enable_auto_commit=False,
        client_id=f"{settings.app_id}-alert-reconcile", isolation_level="read_committed",
        fetch_max_wait_ms=50,  # reads stop at known end offsets: never wait for new data
        **settings.aiokafka_security_kwargs())
    try:
        await consumer.start()  # inside: a start cut short (a rebalance, a stop) is closed too
        return await asyncio.wait_for(
            _read(consumer, alerts_topic, changelog_topic, parts, partition_of, now_us, settings),
            settings.alert_reconcile_timeout_s)
    finally:
        await consumer.stop()


async def _read(consumer: AIOKafkaConsumer, alerts_topic: str, changelog_topic: str, parts: set[int],
                partition_of: Callable[[str], int], now_us: int, s: Settings) -> Published:
    cluster = await fetch_all_metadata(consumer)  # metadata of any topic, no group
    last: dict[int, int | None] = {p: None for p in parts}
    changelog_parts = cluster.partitions_for_topic(changelog_topic) or set()
    tps = [TopicPartition(changelog_topic, p) for p in sorted(parts & changelog_parts)]
    if tps:
        ends = await consumer.end_offsets(tps)
        firsts = await consumer.beginning_offsets(tps)
        starts = {tp: max(firsts[tp], ends[tp] - _CHANGELOG_TAIL) for tp in tps}
        async for rec in _records(consumer, starts, ends):
            ts = rec.timestamp * US_PER_MS
            prev = last[rec.partition]
            last[rec.partition] = ts if prev is None else max(prev, ts)
    start_us = reconcile_from_us(last, now_us=now_us, margin_us=int(s.alert_reconcile_margin_s * US_PER_S),
                                 max_lookback_us=int(s.alert_reconcile_lookback_s * US_PER_S))
    alert_parts = sorted(cluster.partitions_for_topic(alerts_topic) or ())
    if not alert_parts:
        return {}
    # Alerts are keyed by message key: with as many partitions as the table, alerts partition p
    # holds exactly table partition p's keys (same murmur2 partitioner); else read all from the earliest.
    aligned = len(alert_parts) == s.topic_partitions
    earliest = min(start_us.values())
    want = {TopicPartition(alerts_topic, p): (start_us[p] if aligned else earliest)
            for p in alert_parts if not aligned or p in parts}
    found = await consumer.offsets_for_times({tp: max(0, us // US_PER_MS) for tp, us in want.items()})
    ends = await consumer.end_offsets(list(want))
    starts = {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in want}
    out: Published = {}
    async for rec in _records(consumer, starts, ends):
        if rec.key is None or rec.value is None:
            continue
        try:
            key = rec.key.decode()
            alert = orjson.loads(rec.value)
            bit = alert_mark(alert.get("type"), alert.get("stage"))
        except (UnicodeDecodeError, orjson.JSONDecodeError, AttributeError):
            continue  # not one of ours: the topic is shared with nothing we parse
        if not bit:
            continue
        part = partition_of(key)
        if part in parts and rec.timestamp * US_PER_MS >= start_us[part]:
            out.setdefault(rec.key, {})[bit] = alert
    return out


async def _records(consumer: AIOKafkaConsumer, starts: dict[TopicPartition, int],
                   ends: dict[TopicPartition, int]) -> AsyncIterator[Any]:
    """Every record in ``[starts[tp], ends[tp])`` of each partition (the caller bounds the time)."""
    todo = {tp for tp in starts if starts[tp] < ends[tp]}
    if not todo:
        return
    consumer.assign(sorted(todo))
    for tp in todo:
        consumer.seek(tp, starts[tp])
    while todo:
        batch = await consumer.getmany(*todo, timeout_ms=200, max_records=5000)
        for tp, recs in batch.items():
            for rec in recs:
                if rec.offset < ends[tp]:
                    yield rec
        for tp in list(todo):
            if await consumer.position(tp) >= ends[tp]:
                todo.discard(tp)
