"""Delivery without faust's per-record machinery: the drain loop of
:class:`~agents.faust_compat.CommitPointConsumer` (private faust API, part of ``faust_compat``).

* Records of a topic with :class:`RecordBatches` (the worker's input and events topics) go to
  it a fetch at a time, as plain :class:`Record` objects: no faust ``Event``, stream, channel
  queue or ack per record. The worker's own commit point decides what is done and committed.
* Records of other topics (table changelogs during recovery, faust's own) go to faust's
  conductor as before, without the ``wait_first`` per record (:meth:`DirectDelivery._deliver`).
"""
from __future__ import annotations

import asyncio
import logging
import types
from typing import Any, AsyncIterator, Awaitable, Callable

from aiokafka.errors import IllegalStateError
from faust.transport.consumer import CONSUMER_FETCHING

from .batches import FetchedRun, Record, RecordBatches

log = logging.getLogger("funnelwatch")

#: sha1 of the source of faust's ``Consumer._drain_messages`` and ``Consumer.getmany`` that
#: :meth:`DirectDelivery._drain_messages` and :meth:`DirectDelivery.getmany` copy (the
#: contract test fails when one changes).
UPSTREAM_DRAIN_MESSAGES_SHA1 = "886db62001ccb1892026351dcb5e217be1ab308c"
UPSTREAM_GETMANY_SHA1 = "ebaa50fe8fbbe97bdcee137eef5f5b392ba284e3"


class DirectDelivery:
    """Mixin for faust's aiokafka ``Consumer``: records go to :attr:`batch_sinks` a fetch at a
    time, or to faust's streams without a task and an ``asyncio.wait`` per record."""

    #: topic name -> where its records go (set by ``faust_compat.deliver_in_batches``)
    batch_sinks: dict[str, RecordBatches]

    async def wait_empty(self) -> None:
        """faust's: wait for the records being processed, then commit. The batches of
        :attr:`batch_sinks` being processed count too (faust knows nothing of them)."""
        for sink in list(self.__dict__.get("batch_sinks", {}).values()):
            await sink.idle()
        await super().wait_empty()  # type: ignore[misc]

    async def _hand_over(self, fetched: dict[RecordBatches, tuple[int, list[Record]]]) -> None:
        """Queue each sink's records of one fetch; dropped when flow is suspended or the sink
        was cleared since (a rebalance: they are read again from the committed offsets)."""
        suspend_flow = self.suspend_flow
        for sink, (epoch, records) in fetched.items():
            while sink.full() and not suspend_flow.is_set() and sink.epoch == epoch:
                await self.wait_first(sink.room(), suspend_flow.wait())
            if suspend_flow.is_set() or sink.epoch != epoch:
                continue
            sink.put_nowait(records)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        """faust's ``Consumer.getmany`` (faust-streaming 0.15.3), yielding the records of each
        partition of a topic in :attr:`batch_sinks` as one :class:`FetchedRun` (after the same
        flow, generation and active-partition checks, made once per partition: nothing can
        change them while the loop runs, it does not await), and the other records one by one
        as faust's ``Message``, round-robin, as faust does.

        Records fetched and not handed on are fetched again (:meth:`_rewind`): faust drops them
        where flow stopped, the generation changed or the partition is paused, after aiokafka
        moved past them. For the worker's topics the seek to the committed offsets brings them
        back, but a table changelog has no committed offset: a fetch of changelog records that
        returned just after recovery's seek, while flow was still stopped, left recovery
        reading from past them, finishing with the state of whole key ranges missing (or
        never finishing).

        **Upstream proposal**: the same in faust's ``getmany``."""
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        fetched = records
        handed: dict[Any, int] = {}  # partition -> offset of the last record handed on

        sinks = self.__dict__.get("batch_sinks")
        if sinks and self.flow_active:
            others = {}
            runs = []
            for tp, recs in records.items():
                if tp.topic not in sinks:
                    others[tp] = recs
                elif active_partitions is None or tp in active_partitions or tp in self._buffered_partitions:
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    runs.append((tp, FetchedRun(recs)))
            for tp_run in runs:
                if not self.flow_active or self.app.consumer_generation_id != generation_id:
                    await self._rewind(fetched, handed)
                    return
                handed[tp_run[0]] = tp_run[1].records[-1].offset
                yield tp_run
            records = others

        records_it = self.scheduler.iterate(records)
        to_message = self._to_message  # localize
        if self.flow_active:
            for tp, record in records_it:
                if not self.flow_active:
                    break
                new_generation_id = self.app.consumer_generation_id
                if new_generation_id != generation_id:
                    self.log.dev(
                        "Generation id changed from %r to %r. Cancelling getmany.",
                        generation_id,
                        new_generation_id,
                    )
                    break
                if (
                    active_partitions is None
                    or tp in active_partitions
                    or tp in self._buffered_partitions
                ):
                    highwater_mark = self.highwater(tp)
                    self.app.monitor.track_tp_end_offset(tp, highwater_mark)
                    # convert timestamp to seconds from int milliseconds.
                    handed[tp] = record.offset
                    yield tp, to_message(tp, record)
        else:
            self.log.dev(
                "getmany called while flow not active. Seek back to committed offsets."
            )
            try:
                await self.perform_seek()
            except Exception as ex:
                self.log.warning(f"exception performing seek when flow not active {ex}")
        await self._rewind(fetched, handed)

    async def _rewind(self, fetched: dict[Any, list], handed: dict[Any, int]) -> None:
        """Move each partition of ``fetched`` back to its first record not handed on, if its
        position is still just past the fetch (a seek since, by recovery, the committed offsets
        or the commit point, is left as it is)."""
        undelivered = {}
        for tp, recs in fetched.items():
            last = handed.get(tp)
            if not recs or last == recs[-1].offset:
                continue
            first = recs[0].offset if last is None else next(r.offset for r in recs if r.offset > last)
            undelivered[tp] = (first, recs[-1].offset + 1)
        if undelivered:
            thread = self._thread
            await thread.call_thread(_rewind_in_thread, thread._ensure_consumer(), undelivered)

    async def _drain_messages(self, fetcher: Any) -> None:
        """faust's ``Consumer._drain_messages`` (faust-streaming 0.15.3), handing each fetch's
        records of a topic with a sink in :attr:`batch_sinks` to it (:meth:`_hand_over`) and
        delivering other records through :meth:`_deliver` instead of
        ``wait_first(callback(message), suspend_flow.wait())``.

        **Upstream proposal** (faust-streaming, ``faust/transport/consumer.py``): the drain loop
        hands every record to the conductor with ``await self.wait_first(callback(message),
        self.suspend_flow.wait())``. That wraps four awaitables in tasks (the callback, the
        suspend-flow event, the service's stopped and crashed events), runs ``asyncio.wait`` and
        cancels three tasks — for every record, although the callback almost never waits (it
        only does when a stream buffer is full or flow control is suspended). On a minimal app
        (one agent per topic, ``take_events(1000)``, nothing else) this is most of faust's
        per-record cost: replacing it with a plain ``await callback(message)`` took the floor
        from ~7k to ~13k records/s on one core. The change proposed keeps the race exactly where
        it matters: when flow is already suspended the record is not delivered at all (stricter
        than today, where the callback task still gets its first step); otherwise the callback's
        coroutine is run eagerly up to its first suspension, and only if it does suspend is the
        rest of it raced against ``suspend_flow`` (and the consumer stopping or crashing) in
        ``wait_first`` as today, so a delivery blocked on a full buffer is still cancelled by a
        rebalance. Everything else in the loop (read offsets, gaps, ``commit_every``, generation
        and active-partition checks in ``getmany``, the yield every 100 records, the error
        handling) is unchanged. Python ≥ 3.12 could instead start the task eagerly
        (``asyncio.eager_task_factory``); this version also runs on 3.8–3.11.
        """
        callback = self.callback
        sinks = self.__dict__.setdefault("batch_sinks", {})
        getmany = self.getmany
        deliver = self._deliver
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)

                # Sleeping because sometimes getmany is called in a loop
                # never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    fetched: dict[RecordBatches, tuple[int, list[Record]]] = {}
                    async for tp, message in ait:
                        sink = sinks.get(tp.topic)
                        if sink is not None:  # a run of a sink topic's partition (or one record of it)
                            records = message.records if type(message) is FetchedRun else [message]
                            num_since_yield += await self._take_run(tp, records, sink, fetched)
                            if num_since_yield > yield_every:
                                await sleep(0)
                                num_since_yield = 0
                            continue
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            # We have a gap in income messages
                            if gap > 1 and r_offset:
                                acks_enabled = acks_enabled_for(message.topic)
                                if acks_enabled:
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            await deliver(callback, message)
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                         offset, message.key, message.value)
                    if fetched:
                        await self._hand_over(fetched)
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)

    async def _take_run(self, tp: Any, records: list, sink: RecordBatches,
                        fetched: dict[RecordBatches, tuple[int, list[Record]]]) -> int:
        """The drain loop's per-record steps for a :class:`FetchedRun`, record by record but
        without an ``await`` each: records below the read offset are dropped, offset gaps
        booked (``_add_gap``) as faust does, ``commit_every`` honoured; the rest go to the
        fetch's list for ``sink``, and the read offset moves to the last one. Returns the
        number of records looked at."""
        r_offset = self._read_offset[tp]
        acks_enabled = None
        got = fetched.get(sink)
        if got is None:
            got = fetched[sink] = (sink.epoch, [])
        out = got[1]
        append = out.append
        last = r_offset
        for record in records:
            offset = record.offset
            if last is not None:
                if offset < last:
                    continue  # already read (faust: "DROPPED MESSAGE ROFF")
                if offset - last > 1 and last:
                    if acks_enabled is None:
                        acks_enabled = self.app.topics.acks_enabled_for(tp.topic)
                    if acks_enabled:
                        await self._add_gap(tp, last + 1, offset)
            append(Record(tp, offset, record.key, record.value))
            last = offset
        if last is not None and last != r_offset:
            self._read_offset[tp] = last
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()
        return len(records)

    async def _deliver(self, callback: Callable[[Any], Awaitable[Any]], message: Any) -> bool:
        """Hand one record to faust (``callback`` is the conductor's ``on_message``); False when
        it was not delivered because flow is suspended (a rebalance is under way).

        The callback's coroutine runs here up to its first suspension; when it completes without
        one (the stream buffer had room: the common case) that is the whole delivery. When it
        suspends (a full buffer, suspended flow control), the rest of it runs as a task raced
        against ``suspend_flow`` and the consumer stopping or crashing, as faust's loop does for
        every record: a rebalance cancels it.
        """
        if self.suspend_flow.is_set():
            return False
        coro = callback(message)
        if not isinstance(coro, types.CoroutineType):  # not an ``async def`` callback: faust's way
            await self.wait_first(coro, self.suspend_flow.wait())
            return True
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return True
        await self.wait_first(_finish(coro, waiting_on), self.suspend_flow.wait())
        return True


async def _rewind_in_thread(consumer: Any, undelivered: dict[Any, tuple[int, int]]) -> None:
    """In the consumer's thread: seek each partition back to ``first`` where aiokafka's position
    is ``end`` (read and moved with no await between: no other seek comes in between)."""
    for tp, (first, end) in undelivered.items():
        try:
            if await consumer.position(tp) == end:
                consumer.seek(tp, first)
                log.debug("funnelwatch: %s/%d: %d record(s) fetched and not delivered: fetched again",
                          tp.topic, tp.partition, end - first)
        except IllegalStateError:  # no longer assigned: its next owner reads them
            continue


@types.coroutine
def _continue(coro: Any, waiting_on: Any) -> Any:
    """Drive ``coro`` — started by hand, now suspended on ``waiting_on`` — to its end from
    inside a task: every yield goes to the task, every result or exception back to ``coro``."""
    try:
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - cancellation included: passed on
                waiting_on = coro.throw(exc)
            else:
                waiting_on = coro.send(sent)
    except StopIteration as stop:
        return stop.value


async def _finish(coro: Any, waiting_on: Any) -> Any:
    return await _continue(coro, waiting_on)
