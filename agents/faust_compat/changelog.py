"""Table writes sent to the changelog in batches (private faust and aiokafka API, part of
``faust_compat``).

faust's ``table[key] = value`` sends every write on its own: a ``FutureMessage`` through the
producer buffer and aiokafka's ``send``, and, when Kafka acks it, a write of the persisted
offset to the store (for rocksdb: a ``put`` per table write). :class:`BatchedChangelogTable`
writes a batch's states to the partition's store itself (``put_for``) and queues their
changelog records; :meth:`BatchedChangelogTable.send_changelog_batch` sends what a batch wrote as one aiokafka
record batch per partition (``create_batch``/``send_batch``) and writes each partition's
persisted offset once, when Kafka acks its batch.

The guarantee is faust's own: the consumer flushes the producer before it commits input
offsets, so a committed offset never runs ahead of the changelog records its batch wrote.
Under ``exactly_once`` (faust's transactions) and for tables with other serializers than
``raw``, faust's per-write path is kept.
"""
from __future__ import annotations

import logging
import weakref
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Iterator

import faust
from faust.streams import _current_event

log = logging.getLogger("funnelwatch")


class BatchedChangelogTable(faust.Table):
    """A faust ``Table`` of raw bytes whose changelog records are sent a batch at a time."""

    _changelog_pending: dict[int, list[tuple[bytes, bytes | None]]] | None = None
    _persisted_max: dict[int, int] | None = None

    def _batched(self) -> bool:
        return (not self.app.in_transaction and self.key_serializer == "raw" and self.value_serializer == "raw"
                and not self.use_partitioner)

    @cached_property
    def _batched_writes(self) -> bool:
        """:meth:`put_for` queues changelog records (decided once: the processing guarantee and
        the serializers do not change); otherwise it takes faust's per-write path."""
        return self._batched()

    @cached_property
    def _store_kind(self) -> str:
        """``rocksdb`` (a db per partition), ``dict`` (the memory store's dict) or ``other``."""
        if hasattr(self.data, "_db_for_partition"):
            return "rocksdb"
        return "dict" if type(getattr(self.data, "data", None)) is dict else "other"

    def _queue(self, partition: int, key: bytes, value: bytes | None) -> None:
        pending = self._changelog_pending
        if pending is None:
            pending = self._changelog_pending = {}
        records = pending.get(partition)
        if records is None:
            pending[partition] = [(key, value)]
        else:
            records.append((key, value))

    # ------------------------------------------------------------ reads and writes by record

    def get_for(self, record: Any, key: bytes) -> bytes | None:
        """The stored value of ``key`` in the partition of ``record`` (a record of the topic
        the table is co-partitioned with): what ``table.get(key)`` reads with ``record`` as
        faust's current event, without faust's per-read path for rocksdb and memory stores."""
        kind = self._store_kind
        if kind == "rocksdb":
            return self.data._db_for_partition(record.message.partition).get(key)
        if kind == "dict":
            return self.data.data.get(key)
        with _current(record):
            return self.get(key)

    def put_for(self, record: Any, key: bytes, value: bytes | None) -> None:
        """``table[key] = value`` (None: ``table.pop(key)``) with ``record`` as faust's current
        event: stored in the partition of ``record``, its changelog record queued for
        :meth:`send_changelog_batch`; without faust's per-write path for rocksdb and memory stores."""
        if not self._batched_writes:
            with _current(record):
                _set(self, key, value)
            return
        partition = record.message.partition
        kind = self._store_kind
        if kind == "rocksdb":
            db = self.data._db_for_partition(partition)
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
        elif kind == "dict":
            _set(self.data.data, key, value)
        else:
            with _current(record):
                _set(self.data, key, value)
        self._queue(partition, key, value)

    @property
    def changelog_pending(self) -> int:
        """Changelog records written to the store and not yet handed to the producer."""
        return sum(len(r) for r in (self._changelog_pending or {}).values())

    async def send_changelog_batch(self) -> None:
        """Hand the changelog records queued since the last call to the producer: one record
        batch per partition (more when one exceeds the producer's batch size), in write order."""
        pending = self._changelog_pending
        if not pending:
            return
        self._changelog_pending = None
        producer = self.app.producer._ensure_producer()
        topic = self.changelog_topic.get_topic_name()
        for partition, records in pending.items():
            batch = producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                    await self._send_batch(producer, batch, topic, partition)
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)  # the first record always fits
            await self._send_batch(producer, batch, topic, partition)

    async def _send_batch(self, producer: Any, batch: Any, topic: str, partition: int) -> None:
        count = batch.record_count()
        fut = await producer.send_batch(batch, topic, partition=partition)
        fut.add_done_callback(lambda f: self._on_batch_sent(f, partition, count))

    def _on_batch_sent(self, fut: Any, partition: int, count: int) -> None:
        """faust's ``_on_changelog_sent``, once per batch: the store remembers the last offset
        the changelog holds (what recovery skips), never moving it back."""
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("funnelwatch: changelog batch of %d record(s) to %s/%d failed: %r", count,
                      self.changelog_topic.get_topic_name(), partition, exc)
            return
        meta = fut.result()
        last = meta.offset + count - 1
        seen = self._persisted_max
        if seen is None:
            seen = self._persisted_max = {}
        if last > seen.get(partition, -1):
            seen[partition] = last
            self.data.set_persisted_offset(meta.topic_partition, last)


def _set(mapping: Any, key: bytes, value: bytes | None) -> None:
    """``mapping[key] = value``; None: the key is removed."""
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value


@contextmanager
def _current(record: Any) -> Iterator[None]:
    """``record`` is faust's "current event" (the table path of other stores reads it)."""
    token = _current_event.set(weakref.ref(record))
    try:
        yield
    finally:
        _current_event.reset(token)
