"""The worker's consumer: commits from the commit point, fetch wait, delivery in batches
(private faust and aiokafka API, part of ``faust_compat``)."""
from __future__ import annotations

from typing import Any, Hashable, Iterator, Mapping, Protocol

import faust
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka

from .batches import RecordBatches
from .delivery import DirectDelivery


class CommitSource(Protocol):
    """What :class:`CommitPointConsumer` commits from (``agents.commit.CommitPoint``)."""

    topics: frozenset[str]  # the topics whose offsets it owns
    next: Mapping[Hashable, int]  # TP -> next offset not yet processed


class FetchTunedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread, with the worker's ``fetch_max_wait_ms``.

    faust hard-codes ``fetch_max_wait_ms=1500`` (``_create_worker_consumer``). aiokafka keeps one
    fetch request in flight per broker, and a partition whose fetched records are still
    buffered is left out of the next request: when every partition in the request is caught
    up (the events topic, waiting for what ingest writes next), the request waits up to that
    long on the broker while the input partitions, drained meanwhile, cannot be fetched — and
    ingest waits for them. Kafka's own clients default to 500 ms; the worker uses
    ``FUNNELWATCH_FETCH_MAX_WAIT_MS`` (100), carried by the transport."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms  # read when the consumer starts its fetcher
        return consumer


class CommitPointConsumer(DirectDelivery, faust_aiokafka.Consumer):
    """faust's aiokafka consumer committing the offsets of :attr:`commit_point`'s topics from it.

    faust acks records its stream skipped and books offset jumps as compaction gaps
    (``Consumer._new_offset``): it would commit past records no agent processed. Its ack
    bookkeeping still runs (kept bounded); the offset it commits is the commit point's,
    and a partition whose commit point moved is committed even without new acks. Other
    topics (and every topic while no commit point is attached) keep faust's offsets.

    It also hands each fetch's records to the agents' batches (topics given to
    :func:`deliver_in_batches`) and other records to faust's streams without faust's per-record
    ``wait_first`` (:class:`~.delivery.DirectDelivery`), and fetches through a
    :class:`FetchTunedConsumerThread`.
    """

    commit_point: CommitSource | None = None

    def _new_consumer_thread(self) -> Any:
        return FetchTunedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _seek(self, partition: Any, offset: int) -> None:
        """faust's, with aiokafka's seek made in the consumer's thread. faust makes it from the
        event loop's thread, racing the fetch that runs in the consumer's: aiokafka's
        ``fetched_records`` then failed with a ``KeyError`` and the fetcher crashed (a commit
        point re-read, ``CommitPoint._reread``, during a rebalance storm)."""
        thread = self._thread
        await thread.call_thread(_seek_in_thread, thread._ensure_consumer(), partition, offset)

    def _new_offset(self, tp: Any) -> int | None:
        offset = super()._new_offset(tp)
        cp = self.commit_point
        if cp is not None and tp.topic in cp.topics:
            return cp.next.get(tp)
        return offset

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[Any]:
        tps = list(super()._filter_tps_with_pending_acks(topics))
        cp = self.commit_point
        if cp is None:
            return iter(tps)
        listed = set(tps)
        committed = self._committed_offset
        for tp, n in list(cp.next.items()):
            if tp in listed or not (topics is None or tp in topics or tp.topic in topics):
                continue
            c = committed.get(tp)
            if c is None or n > c:
                tps.append(tp)
        return iter(tps)


async def _seek_in_thread(consumer: Any, tp: Any, offset: int) -> None:
    consumer.seek(tp, offset)


def deliver_in_batches(app: faust.App, topic: Any, max_records: int) -> RecordBatches:
    """The records of ``topic``, a fetch at a time, for an agent to iterate instead of its faust
    stream (which then stays idle): the consumer hands them over without a faust ``Event``
    per record. The topic is subscribed here, since no stream iterates it; the batches are
    cleared when a rebalance starts (faust's flow control), and faust waits for the batch
    being processed before its last commit of revoked partitions (``wait_empty``)."""
    name = topic.get_topic_name()
    sink = RecordBatches(name, max_records)
    app.consumer.__dict__.setdefault("batch_sinks", {})[name] = sink
    app.flow_control.manage_queue(sink)
    app.topics.add(topic)
    return sink


class CommitPointTransport(faust_aiokafka.Transport):
    Consumer = CommitPointConsumer
    fetch_max_wait_ms: int = 100  # FetchTunedConsumerThread's (install_commit_transport sets the worker's)


def install_commit_transport(app: faust.App, *, fetch_max_wait_ms: int = CommitPointTransport.fetch_max_wait_ms
                             ) -> None:
    """Give ``app`` the transport whose consumer is a :class:`CommitPointConsumer` (before the
    consumer is first built), fetching with ``fetch_max_wait_ms``."""
    transport = CommitPointTransport(app.conf.broker_consumer, app)
    transport.fetch_max_wait_ms = fetch_max_wait_ms
    app.transport = transport


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The offset faust last committed (or read as committed) for ``tp``; None if unknown."""
    return consumer._committed_offset.get(tp)


async def group_start_offset(consumer: Any, tp: Any) -> int:
    """The group's committed offset of ``tp`` asked from the broker, else the log start."""
    thread = consumer._thread
    ak = thread._ensure_consumer()
    atp = TopicPartition(tp.topic, tp.partition)
    committed = await thread.call_thread(ak.committed, atp)
    if committed is None or committed < 0:
        committed = (await thread.call_thread(ak.beginning_offsets, [atp]))[atp]
    return committed
