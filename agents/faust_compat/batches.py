"""The records the worker's agents get a fetch at a time (part of ``faust_compat``): a
:class:`Record` per record, a :class:`FetchedRun` per partition of a fetch, and the bounded
:class:`RecordBatches` an agent iterates instead of a faust stream. Filled by
:class:`~agents.faust_compat.delivery.DirectDelivery`."""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, AsyncIterator


class Record:
    """One record as an agent of :class:`RecordBatches` sees it: what it reads of a faust event
    (``key``, ``value``, ``message`` with ``tp``, ``topic``, ``partition``, ``offset``: the record
    is its own message), built straight from aiokafka's record (no faust ``Message``)."""

    __slots__ = ("key", "value", "tp", "topic", "partition", "offset", "__weakref__")

    def __init__(self, tp: Any, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.key = key
        self.value = value
        self.tp = tp
        self.topic = tp.topic
        self.partition = tp.partition
        self.offset = offset

    @property
    def message(self) -> Record:
        return self


class FetchedRun:
    """The records of one partition of a sink topic in one fetch, in offset order (aiokafka's
    ``ConsumerRecord`` objects): what :meth:`DirectDelivery.getmany` yields instead of a message each."""

    __slots__ = ("records",)

    def __init__(self, records: list) -> None:
        self.records = records


class RecordBatches:
    """The records of one topic, handed over by the consumer a fetch at a time: what an agent
    iterates instead of a faust stream (``async for batch in batches``).

    Bounded: the consumer waits while :attr:`max_queued` fetches are queued (a rebalance
    cancels the wait). Registered with faust's flow control, which clears it when a rebalance
    starts; a fetch made before a clear is dropped (its records are read again from the
    committed offsets). :meth:`idle` waits for the batch being processed (faust's
    ``wait_empty`` does, before its last commit of revoked partitions).
    """

    def __init__(self, topic: str, max_records: int, max_queued: int = 4) -> None:
        self.topic = topic
        self.max_records = max_records
        self.max_queued = max_queued
        self.epoch = 0  # moved by clear(): fetches made before it are dropped
        self._queue: deque[list[Record]] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()

    def clear(self) -> None:
        self._queue.clear()
        self.epoch += 1
        self._room.set()

    def full(self) -> bool:
        return len(self._queue) >= self.max_queued

    def put_nowait(self, records: list[Record]) -> None:
        self._queue.append(records)
        self._ready.set()
        if self.full():
            self._room.clear()

    async def room(self) -> None:
        await self._room.wait()

    async def idle(self) -> None:
        while not self._idle.is_set():
            await self._idle.wait()

    def __aiter__(self) -> AsyncIterator[list[Record]]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[Record]]:
        queue = self._queue
        while True:
            while not queue:
                self._ready.clear()
                await self._ready.wait()
            batch = queue.popleft()
            while queue and len(batch) + len(queue[0]) <= self.max_records:
                batch += queue.popleft()
            self._room.set()
            self._idle.clear()
            try:
                yield batch
            finally:
                self._idle.set()
