"""Contract of agents/faust_compat (the package): every private faust/aiokafka attribute the worker relies
on exists (a test per name, so an upgrade that drops one fails by name), the pins in
pyproject are the versions the module is tested on, and the worker's consumer is the
commit-point subclass installed through the public transport setter."""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from agents import faust_compat
from agents.faust_compat import REQUIRED, REQUIRED_INSTANCE, TESTED_AIOKAFKA, TESTED_FAUST

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path,attr", [(p, a) for p, attrs in REQUIRED.items() for a in attrs],
                         ids=lambda x: str(x))
def test_private_attribute_exists(path: str, attr: str) -> None:
    obj = faust_compat._resolve(path)
    assert hasattr(obj, attr), f"{path}.{attr} is gone: agents/faust_compat needs it"


def test_missing_names_nothing() -> None:
    assert faust_compat.missing() == []


def _instance(pipeline, what: str):
    if what == "consumer":
        return pipeline.app.consumer
    if what == "web":
        return pipeline.app.web
    if what == "agent":
        return next(iter(pipeline.app.agents.values()))
    if what == "supervisor":
        from mode import OneForOneSupervisor

        return OneForOneSupervisor()
    if what == "aiokafka_consumer":
        import asyncio

        from aiokafka import AIOKafkaConsumer

        async def make() -> AIOKafkaConsumer:  # it wants a running loop; never started: no connection
            return AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")

        return asyncio.run(make())
    if what == "rocksdb_store":
        import tempfile

        from agents.pipeline import Pipeline
        from agents.settings import Settings

        return Pipeline(Settings(store="rocksdict://", data_dir=tempfile.mkdtemp())).messages.data
    raise AssertionError(what)


@pytest.mark.parametrize("what,attr", [(w, a) for w, attrs in REQUIRED_INSTANCE.items() for a in attrs],
                         ids=lambda x: str(x))
def test_instance_attribute_exists(pipeline, what: str, attr: str) -> None:
    assert hasattr(_instance(pipeline, what), attr), f"{what}.{attr} is gone: agents/faust_compat needs it"


def test_worker_consumer_commits_from_the_commit_point(pipeline) -> None:
    consumer = pipeline.app.consumer
    assert isinstance(consumer, faust_compat.CommitPointConsumer)
    assert consumer.commit_point is pipeline.commit
    # installed by subclassing: nothing rebound on the instance
    assert "_new_offset" not in vars(consumer) and "_filter_tps_with_pending_acks" not in vars(consumer)


def test_web_driver_is_the_hardened_one(pipeline) -> None:
    assert isinstance(pipeline.app.web, faust_compat.HardenedWeb)
    assert isinstance(pipeline.app.web._runner, faust_compat.HardenedAppRunner)


def test_agent_error_hook_is_a_subclass_method(pipeline) -> None:
    assert isinstance(pipeline.app, faust_compat.WorkerApp)
    assert "_on_agent_error" not in vars(pipeline.app)
    assert pipeline.health.on_agent_error in pipeline.app.agent_error_hooks


def _pin(deps: list[str], dist: str) -> str:
    [spec] = [d for d in deps if re.match(rf"{re.escape(dist)}\b", d)]
    return spec


def test_pyproject_pins_the_tested_versions() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert _pin(deps, "faust-streaming") == "faust-streaming==" + TESTED_FAUST[-1]
    assert _pin(deps, "aiokafka") == "aiokafka==" + TESTED_AIOKAFKA[-1]
    assert faust_compat.versions() == {"faust-streaming": TESTED_FAUST[-1], "aiokafka": TESTED_AIOKAFKA[-1]}


def test_no_private_faust_api_outside_the_compat_module() -> None:
    """Private faust/aiokafka names appear in the agents/faust_compat package only."""
    names = {a for attrs in [*REQUIRED.values(), *REQUIRED_INSTANCE.values()] for a in attrs if a.startswith("_")}
    pattern = re.compile(r"\.(%s)\b" % "|".join(map(re.escape, sorted(names))))
    offenders = []
    for path in sorted((ROOT / "agents").rglob("*.py")):
        if "faust_compat" in path.relative_to(ROOT).parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) or "faust.streams import _" in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


# ------------------------------------------------------------- per-record delivery


def test_upstream_drain_loop_is_the_one_copied() -> None:
    """CommitPointConsumer._drain_messages is faust's loop with one line changed: a faust whose
    loop differs must be re-read (and the copy updated) before the pin moves."""
    import hashlib
    import inspect

    from faust.transport.consumer import Consumer

    src = inspect.getsource(Consumer._drain_messages)
    assert hashlib.sha1(src.encode()).hexdigest() == faust_compat.delivery.UPSTREAM_DRAIN_MESSAGES_SHA1
    assert "wait_first(\n                                callback(message), self.suspend_flow.wait()" in src


def test_worker_consumer_overrides_the_drain_loop(pipeline) -> None:
    consumer = pipeline.app.consumer
    assert type(consumer)._drain_messages is faust_compat.CommitPointConsumer._drain_messages
    assert "_drain_messages" not in vars(consumer) and "_deliver" not in vars(consumer)


class _Msg:
    def __init__(self, tp, offset: int) -> None:  # noqa: ANN001
        self.tp, self.topic, self.offset, self.key, self.value = tp, tp.topic, offset, None, b"x"


class _Fetcher:
    def __init__(self) -> None:
        import asyncio

        self._stopped = asyncio.Event()


def _drain(on_message, records: int = 10, *, flow_check: bool = False, timeout_s: float = 10.0,
           as_task: bool = False, sink_topic: str | None = None, on_sink=None, fetches: int = 1):
    """Run CommitPointConsumer._drain_messages over ``records`` fake records of one partition
    (one getmany batch, then the fetcher stops). ``on_message(consumer, message)`` is the
    conductor callback. ``flow_check``: the fake getmany stops yielding once flow is
    suspended, as faust's does; without it only the delivery itself can refuse a record.
    ``as_task``: the callback returns a task (an awaitable that is not a coroutine).
    ``sink_topic``: a topic whose records go to ``RecordBatches`` (the partition's topic is
    "t"); ``on_sink(consumer, sink)`` runs as a task consuming it. ``fetches``: getmany
    batches of ``records`` records each. Returns (consumer, read offset of the partition)."""
    import asyncio

    import faust
    from faust.types import TP

    async def go():
        app = faust.App("fw-compat-test", broker="kafka://127.0.0.1:9", store="memory://")
        faust_compat.install_commit_transport(app)
        consumer = app.consumer
        tp = TP("t", 0)
        fetcher = _Fetcher()
        calls = 0

        async def getmany(timeout: float):  # noqa: ARG001
            nonlocal calls
            calls += 1
            if calls > fetches:
                fetcher._stopped.set()
                return
            for i in range((calls - 1) * records, calls * records):
                if flow_check and not consumer.flow_active:
                    break
                yield tp, _Msg(tp, i)

        async def callback(message):
            return await on_message(consumer, message)

        consumer.getmany = getmany  # test double on this instance only
        consumer.callback = (lambda m: asyncio.ensure_future(callback(m))) if as_task else callback
        task = None
        if sink_topic is not None:
            sink = faust_compat.deliver_in_batches(app, app.topic(sink_topic), 1000)
            sink.max_queued = 2
            task = asyncio.ensure_future(on_sink(consumer, sink))
        await asyncio.wait_for(consumer._drain_messages(fetcher), timeout_s)
        if task is not None:
            await asyncio.sleep(0.05)
            task.cancel()
        return consumer, consumer._read_offset[tp]

    return asyncio.run(go())


def test_delivery_in_order_without_a_task_per_record() -> None:
    import asyncio

    seen: list[int] = []
    tasks: set = set()

    async def on_message(consumer, message) -> None:  # noqa: ANN001
        tasks.add(asyncio.current_task())
        seen.append(message.offset)

    _, read = _drain(on_message, 250)
    assert seen == list(range(250))
    assert read == 249
    assert len(tasks) == 1  # delivered inline by the drain loop's own task: no task per record


def test_delivery_that_waits_completes_before_the_next_record() -> None:
    import asyncio

    seen: list[tuple[str, int]] = []

    async def on_message(consumer, message) -> None:  # noqa: ANN001
        seen.append(("start", message.offset))
        if message.offset % 3 == 0:
            await asyncio.sleep(0.001)  # a full buffer: the rest runs raced against suspend_flow
            await asyncio.sleep(0)
        seen.append(("end", message.offset))

    _drain(on_message, 12)
    assert seen == [(w, i) for i in range(12) for w in ("start", "end")]


def test_no_delivery_while_flow_is_suspended() -> None:
    seen: list[int] = []

    async def on_message(consumer, message) -> None:  # noqa: ANN001
        seen.append(message.offset)
        if message.offset == 2:
            consumer.stop_flow()  # a rebalance starts

    # The fake getmany keeps yielding: the delivery itself must refuse the rest.
    consumer, _ = _drain(on_message, 10, flow_check=False)
    assert seen == [0, 1, 2]
    assert consumer.suspend_flow.is_set()


def test_a_delivery_blocked_when_flow_is_suspended_is_cancelled() -> None:
    import asyncio

    seen: list[int] = []
    cancelled: list[int] = []

    async def on_message(consumer, message) -> None:  # noqa: ANN001
        if message.offset == 1:
            asyncio.get_running_loop().call_later(0.01, consumer.stop_flow)
            try:
                await asyncio.Event().wait()  # blocked (full buffer) until the rebalance
            except asyncio.CancelledError:
                cancelled.append(message.offset)
                raise
        seen.append(message.offset)

    _drain(on_message, 5, flow_check=True)
    assert seen == [0]
    assert cancelled == [1]


def test_a_callback_error_propagates() -> None:
    async def on_message(consumer, message) -> None:  # noqa: ANN001
        if message.offset == 3:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        _drain(on_message, 5)


def test_a_callback_error_after_waiting_propagates() -> None:
    import asyncio

    async def on_message(consumer, message) -> None:  # noqa: ANN001
        if message.offset == 3:
            await asyncio.sleep(0)
            raise ValueError("boom after wait")

    with pytest.raises(ValueError, match="boom after wait"):
        _drain(on_message, 5)


def test_a_callback_that_is_not_a_coroutine_is_awaited_as_faust_does() -> None:
    seen: list[int] = []

    async def on_message(consumer, message) -> None:  # noqa: ANN001
        seen.append(message.offset)

    _drain(on_message, 20, as_task=True)
    assert seen == list(range(20))


# ---------------------------------------------------------------- batch delivery


def test_batch_delivery_hands_over_each_fetch_without_the_conductor() -> None:
    """A topic with RecordBatches gets its records a fetch at a time, in order, as Records
    (key, value, message); the conductor callback sees none of them."""
    got: list[list[int]] = []
    delivered: list[int] = []

    async def on_message(consumer, message) -> None:  # noqa: ANN001
        delivered.append(message.offset)

    async def on_sink(consumer, sink) -> None:  # noqa: ANN001
        async for batch in sink:
            assert all(r.value == b"x" and r.message.tp.topic == "t" for r in batch)
            got.append([r.message.offset for r in batch])

    _, read = _drain(on_message, 5, sink_topic="t", on_sink=on_sink, fetches=3)
    assert delivered == []
    assert [o for b in got for o in b] == list(range(15))
    assert read == 14


def test_batch_delivery_waits_for_room_and_merges_queued_fetches() -> None:
    """The consumer waits while max_queued fetches wait to be processed (bounded memory); an
    agent taking a batch gets every fetch queued meanwhile, up to max_records."""
    import asyncio

    got: list[list[int]] = []

    async def on_sink(consumer, sink) -> None:  # noqa: ANN001
        await asyncio.sleep(0.05)  # a slow agent: the consumer fills the queue and waits
        assert sink.full()
        async for batch in sink:
            got.append([r.message.offset for r in batch])

    async def on_message(consumer, message) -> None:  # noqa: ANN001, ARG001
        raise AssertionError("no record goes to the conductor")

    _drain(on_message, 3, sink_topic="t", on_sink=on_sink, fetches=4)
    assert [o for b in got for o in b] == list(range(12))
    assert got[0] == list(range(6))  # the two queued fetches, merged


def test_batch_delivery_drops_fetches_of_a_rebalance() -> None:
    """A fetch waiting for room when a rebalance starts (flow suspended) is dropped, as is
    one made before faust's flow control cleared the queue: the committed offsets bring
    those records back."""
    import asyncio

    got: list[int] = []

    async def on_sink(consumer, sink) -> None:  # noqa: ANN001
        await asyncio.sleep(0.02)
        consumer.stop_flow()  # a rebalance starts while the consumer waits for room
        sink.clear()
        await asyncio.sleep(0.02)
        consumer.resume_flow()
        async for batch in sink:
            got.extend(r.message.offset for r in batch)

    async def on_message(consumer, message) -> None:  # noqa: ANN001, ARG001
        raise AssertionError("no record goes to the conductor")

    _, read = _drain(on_message, 2, sink_topic="t", on_sink=on_sink, fetches=4)
    # fetches 1-2 cleared, 3 dropped (it waited for room), 4 dropped (flow suspended)
    assert got == []
    assert read == 7


def test_wait_empty_waits_for_the_batch_being_processed() -> None:
    """faust's wait_empty (before its last commit of revoked partitions) returns only after
    the agent finished the batch it took."""
    import asyncio

    import faust

    from agents.faust_compat.delivery import Record

    async def go() -> list[str]:
        app = faust.App("fw-compat-test", broker="kafka://127.0.0.1:9", store="memory://")
        faust_compat.install_commit_transport(app)
        consumer = app.consumer
        sink = faust_compat.deliver_in_batches(app, app.topic("t"), 1000)
        order: list[str] = []

        async def agent() -> None:
            async for _batch in sink:
                order.append("taken")
                await asyncio.sleep(0.05)
                order.append("done")

        async def commit_and_end_transactions() -> None:
            order.append("committed")

        consumer.commit_and_end_transactions = commit_and_end_transactions  # test double: no broker
        task = asyncio.ensure_future(agent())
        sink.put_nowait([Record(SimpleTP("t", 0), 0, None, b"x")])
        await asyncio.sleep(0.01)
        await consumer.wait_empty()
        task.cancel()
        return order

    assert asyncio.run(go()) == ["taken", "done", "committed"]


class SimpleTP:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


def test_partition_items_and_slices_of_a_rocksdb_table(tmp_path) -> None:
    """The rocksdb store's db of one partition is read alone, in key order, without faust's
    offset key; a slice continues after a key; other stores answer None (the caller filters)."""
    from agents.app import Partitioner
    from agents.pipeline import Pipeline
    from agents.settings import Settings

    p = Pipeline(Settings(store="rocksdict://", data_dir=str(tmp_path)))
    store = p.messages.data
    part = Partitioner(4)
    keys = {k: part(k) for k in (f"activity_sync|t|m{i}" for i in range(40))}
    for k, n in keys.items():
        store._db_for_partition(n).put(k.encode(), b"v" + k.encode())
    store._db_for_partition(0).put(store.offset_key, b"17")
    got = list(faust_compat.partition_items(p.messages, {0, 2}, part))
    assert sorted(got) == sorted((n, k.encode(), b"v" + k.encode()) for k, n in keys.items() if n in (0, 2))
    mine = sorted(k.encode() for k, n in keys.items() if n == 0)
    first = faust_compat.partition_slice(p.messages, 0, None, 3)
    assert [k for k, _ in first] == mine[:3]
    rest = faust_compat.partition_slice(p.messages, 0, first[-1][0], 1000)
    assert [k for k, _ in rest] == mine[3:]
    assert faust_compat.partition_slice(p.messages, 0, mine[-1], 10) == []
    assert faust_compat.partition_slice(p.messages, 3, None, 10) is not None
    mem = Pipeline(Settings(store="memory://", data_dir=str(tmp_path / "m"))).messages
    assert faust_compat.partition_slice(mem, 0, None, 10) is None


# ---------------------------------------------------------------- changelog batches


class _Batch:
    def __init__(self, limit: int) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.limit = limit

    def append(self, *, key, value, timestamp):  # noqa: ANN001, ARG002
        if self.records and len(self.records) >= self.limit:
            return None
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class _Producer:
    """aiokafka's create_batch/send_batch: a batch's future resolves to its base offset."""

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self.sent: list[tuple[str, int, list]] = []
        self.futures: list = []
        self.end: dict[int, int] = {}

    def create_batch(self) -> _Batch:
        return _Batch(self.limit)

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int):
        import asyncio

        self.sent.append((topic, partition, batch.records))
        fut = asyncio.get_running_loop().create_future()
        self.futures.append((fut, partition, len(batch.records)))
        return fut

    def ack_all(self, reverse: bool = False) -> None:
        from types import SimpleNamespace

        base: dict[int, int] = {}
        metas = []
        for fut, p, n in self.futures:  # offsets in send order, per partition
            b = base.get(p, 0)
            base[p] = b + n
            metas.append((fut, SimpleNamespace(offset=b, topic_partition=("cl", p))))
        for fut, meta in (reversed(metas) if reverse else metas):
            fut.set_result(meta)


def _changelog_table(producer: _Producer, *, in_transaction: bool = False):
    from types import SimpleNamespace

    from agents.faust_compat.changelog import BatchedChangelogTable

    persisted: list[tuple[object, int]] = []
    table = BatchedChangelogTable.__new__(BatchedChangelogTable)  # no app: the batching alone
    table.__dict__.update(
        app=SimpleNamespace(in_transaction=in_transaction,
                            producer=SimpleNamespace(_ensure_producer=lambda: producer)),
        _changelog_topic=SimpleNamespace(get_topic_name=lambda: "cl"),
        key_serializer="raw", value_serializer="raw", use_partitioner=False,
        _data=SimpleNamespace(set_persisted_offset=lambda tp, off: persisted.append((tp, off))))
    return table, persisted


def test_changelog_records_go_out_per_partition_in_write_order() -> None:
    """A batch's writes are queued (not sent one by one) and go out as record batches of their
    partition, in write order, split where the producer's batch is full; deletes are
    tombstones. The persisted offset is written once per acked batch: the last offset it
    holds, never moved back (acks may arrive out of order)."""
    import asyncio

    async def go():
        producer = _Producer(limit=3)
        table, persisted = _changelog_table(producer)
        for i in range(5):
            table._queue(0, b"k%d" % i, b"v%d" % i)
        table._queue(1, b"x", None)
        assert table.changelog_pending == 6 and producer.sent == []
        await table.send_changelog_batch()
        assert table.changelog_pending == 0
        assert producer.sent == [("cl", 0, [(b"k0", b"v0"), (b"k1", b"v1"), (b"k2", b"v2")]),
                                 ("cl", 0, [(b"k3", b"v3"), (b"k4", b"v4")]),
                                 ("cl", 1, [(b"x", None)])]
        producer.ack_all(reverse=True)
        await asyncio.sleep(0)
        return persisted

    persisted = asyncio.run(go())
    assert persisted == [(("cl", 1), 0), (("cl", 0), 4)]  # partition 0's first batch (last offset 2) came later


def test_changelog_falls_back_to_faust_per_write_under_transactions() -> None:
    producer = _Producer()
    table, _ = _changelog_table(producer, in_transaction=True)
    assert table._batched() is False
    table2, _ = _changelog_table(producer)
    assert table2._batched() is True
    table2.value_serializer = "json"
    assert table2._batched() is False


# ---------------------------------------------------------------- fetch wait


@pytest.mark.parametrize("env,expected", [({}, 100), ({"FUNNELWATCH_FETCH_MAX_WAIT_MS": "250"}, 250)])
def test_the_worker_consumer_fetches_with_its_own_max_wait(monkeypatch: pytest.MonkeyPatch, env, expected) -> None:
    """faust hard-codes fetch_max_wait_ms=1500; the worker's aiokafka consumer gets the
    setting's value instead (read when the consumer starts its fetcher)."""
    import asyncio

    for k in [k for k in os.environ if k.startswith("FUNNELWATCH_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from agents.pipeline import Pipeline
    from agents.settings import Settings

    pipe = Pipeline(Settings())
    thread = pipe.app.consumer._thread
    assert isinstance(thread, faust_compat.FetchTunedConsumerThread)

    async def make():  # aiokafka wants a running loop; never started: no connection
        return thread._create_worker_consumer(pipe.app.transport)

    assert asyncio.run(make())._fetch_max_wait_ms == expected


@pytest.mark.parametrize("store", ["rocksdict://", "memory://"])
def test_reads_and_writes_by_record_land_where_faust_puts_them(tmp_path, store: str) -> None:
    """put_for/get_for store and read in the partition of the record, as faust's table does
    with that record as the current event (rocksdb: that partition's db; memory: the dict),
    and queue one changelog record per write; faust's own reads find the values."""
    from types import SimpleNamespace

    from agents.pipeline import Pipeline
    from agents.settings import Settings

    p = Pipeline(Settings(store=store, data_dir=str(tmp_path)))
    table = p.messages
    rec = {n: SimpleNamespace(message=SimpleNamespace(partition=n, topic="events")) for n in range(4)}
    table.put_for(rec[2], b"k1", b"v1")
    table.put_for(rec[3], b"k2", b"v2")
    table.put_for(rec[3], b"k2", None)
    assert table.get_for(rec[2], b"k1") == b"v1"
    assert table.get_for(rec[3], b"k2") is None
    assert table.changelog_pending == 3
    assert table._changelog_pending == {2: [(b"k1", b"v1")], 3: [(b"k2", b"v2"), (b"k2", None)]}
    if store.startswith("rocksdict"):
        assert table.data._db_for_partition(2).get(b"k1") == b"v1"
        assert table.data._db_for_partition(0).get(b"k1") is None
        assert table.get_for(rec[0], b"k1") is None  # another partition's db: not there
    assert table.get(b"k1") == b"v1"  # faust's read without a current event looks everywhere


# ---------------------------------------------------------------- runs of a fetch


def test_upstream_getmany_is_the_one_copied() -> None:
    """DirectDelivery.getmany is faust's getmany plus the sink topics' runs: a faust whose
    getmany differs must be re-read (and the copy updated) before the pin moves."""
    import hashlib
    import inspect

    from faust.transport.consumer import Consumer

    src = inspect.getsource(Consumer.getmany)
    assert hashlib.sha1(src.encode()).hexdigest() == faust_compat.delivery.UPSTREAM_GETMANY_SHA1


class _ConsumerRecord:  # what aiokafka's fetcher returns
    def __init__(self, tp, offset: int) -> None:  # noqa: ANN001
        self.topic, self.partition, self.offset = tp.topic, tp.partition, offset
        self.key, self.value = b"k%d" % offset, b"v%d" % offset
        self.timestamp, self.timestamp_type, self.headers, self.checksum = 0, 0, [], None
        self.serialized_key_size = self.serialized_value_size = 2


def test_a_fetch_goes_to_the_sinks_a_partition_at_a_time_and_other_records_to_faust() -> None:
    """Each partition of a sink topic in a fetch is handed over whole (one run, no per-record
    await): records below the read offset dropped, gaps booked as faust books them, the read
    offset at the last record; records of other topics still go to the conductor one by one."""
    import asyncio

    import faust
    from faust.types import TP

    async def go():
        app = faust.App("fw-compat-test", broker="kafka://127.0.0.1:9", store="memory://")
        faust_compat.install_commit_transport(app)
        consumer = app.consumer
        sink = faust_compat.deliver_in_batches(app, app.topic("in"), 1000)
        a, b, other = TP("in", 0), TP("in", 1), TP("changelog", 0)
        fetches = [
            {a: [_ConsumerRecord(a, o) for o in (0, 1, 2)], other: [_ConsumerRecord(other, 7)],
             b: [_ConsumerRecord(b, o) for o in (5, 6, 9)]},  # 7..8: a gap (compaction, markers)
            {a: [_ConsumerRecord(a, o) for o in (1, 2, 3)]},  # 1: below the read offset (2): dropped
        ]
        fetcher = _Fetcher()

        async def wait_next_records(timeout: float):  # noqa: ARG001
            if not fetches:
                fetcher._stopped.set()
                return None, None
            return fetches.pop(0), {a, b, other}

        gaps: list = []

        async def add_gap(tp, start: int, end: int) -> None:  # noqa: ANN001
            gaps.append((tp, start, end))

        delivered: list = []

        async def callback(message) -> None:  # noqa: ANN001
            delivered.append((message.tp, message.offset))

        consumer._wait_next_records = wait_next_records  # test doubles on this instance only
        consumer._add_gap = add_gap
        consumer.highwater = lambda tp: 10
        consumer.callback = callback
        app.topics.acks_enabled_for = lambda topic: True  # as once subscribed (acks on: faust's default)
        await asyncio.wait_for(consumer._drain_messages(fetcher), 10)
        got = []
        async for batch in sink:
            got.append([(r.message.tp, r.offset, r.key, r.value) for r in batch])
            if len(got) == 2 or not sink._queue:
                break
        return got, delivered, gaps, {tp: consumer._read_offset[tp] for tp in (a, b, other)}

    got, delivered, gaps, read = asyncio.run(go())
    a, b, other = TP("in", 0), TP("in", 1), TP("changelog", 0)
    flat = [x for batch in got for x in batch]
    assert [(tp, o) for tp, o, _, _ in flat] == [(a, 0), (a, 1), (a, 2), (b, 5), (b, 6), (b, 9), (a, 2), (a, 3)]
    assert all(k == b"k%d" % o and v == b"v%d" % o for _, o, k, v in flat)
    assert delivered == [(other, 7)]
    assert gaps == [(b, 7, 9)]
    assert read == {a: 3, b: 9, other: 7}


def test_a_recovery_waiting_to_start_marks_a_rebalance_completion_superseded(pipeline) -> None:
    """faust sends ``on_rebalance_complete`` when a recovery ends, before it checks whether a newer
    rebalance cut it short; a newer recovery then waits to start (its start signal is set)."""
    app = pipeline.app
    assert not faust_compat.recovery_superseded(app)
    app.tables.recovery.signal_recovery_start.set()
    assert faust_compat.recovery_superseded(app)
    app.tables.recovery.signal_recovery_start.clear()
    assert not faust_compat.recovery_superseded(app)


class _AioConsumer:  # aiokafka's consumer, as the rewind sees it in the consumer thread
    def __init__(self, positions: dict) -> None:
        self.positions, self.seeks = positions, []

    async def position(self, tp):  # noqa: ANN001
        from aiokafka.errors import IllegalStateError

        if tp not in self.positions:
            raise IllegalStateError(f"{tp} is not assigned")
        return self.positions[tp]

    def seek(self, tp, offset: int) -> None:  # noqa: ANN001
        self.seeks.append((tp, offset))
        self.positions[tp] = offset


class _Thread:
    def __init__(self, consumer: _AioConsumer) -> None:
        self.consumer = consumer

    def _ensure_consumer(self) -> _AioConsumer:
        return self.consumer

    async def call_thread(self, fun, *args):  # noqa: ANN001
        return await fun(*args)


@pytest.mark.parametrize("case", ["flow stops after the first run", "flow stopped before", "new generation",
                                  "paused partition"])
def test_records_fetched_and_not_handed_on_are_fetched_again(case: str) -> None:
    """faust drops a fetch's records where flow stopped, the generation changed or the partition
    is paused, after aiokafka moved past them. A changelog has no committed offset to go back to:
    a drop just after recovery's seek made recovery start past them. Each partition still just
    past its fetched records is moved back to the first one not handed on; one sought since
    (recovery, the committed offsets) or no longer assigned is left alone."""
    import asyncio

    import faust
    from faust.types import TP

    a, b = TP("in", 0), TP("in", 1)  # a sink topic's partitions
    c, d, e = TP("changelog", 0), TP("changelog", 1), TP("changelog", 2)

    async def go():
        app = faust.App("fw-compat-test", broker="kafka://127.0.0.1:9", store="memory://")
        faust_compat.install_commit_transport(app)
        consumer = app.consumer
        faust_compat.deliver_in_batches(app, app.topic("in"), 1000)
        fetch = {a: [_ConsumerRecord(a, o) for o in (0, 1, 2)], b: [_ConsumerRecord(b, o) for o in (5, 6)],
                 c: [_ConsumerRecord(c, o) for o in (10, 11, 12)], d: [_ConsumerRecord(d, 3)],
                 e: [_ConsumerRecord(e, 4)]}
        # Positions just past the fetch, but d's was sought since and e is no longer assigned.
        aio = _AioConsumer({a: 3, b: 7, c: 13, d: 9})
        consumer._thread = _Thread(aio)
        active = {a, b, d, e} if case == "paused partition" else {a, b, c, d, e}

        async def wait_next_records(timeout: float):  # noqa: ARG001
            return fetch, active

        async def perform_seek() -> None:  # the sink topic's partitions go back to their committed offsets
            aio.positions.update({a: 0, b: 0})

        consumer._wait_next_records = wait_next_records  # test doubles on this instance only
        consumer.perform_seek = perform_seek
        consumer.highwater = lambda tp: 20
        consumer.resume_flow()
        if case == "flow stopped before":
            consumer.stop_flow()
        handed = []
        async for tp, message in consumer.getmany(1.0):
            handed.append((tp, message.records[-1].offset if type(message) is faust_compat.FetchedRun
                           else message.offset))
            if case == "flow stops after the first run":
                consumer.stop_flow()
            if case == "new generation" and tp == c:
                app.consumer_generation_id += 1
        return handed, aio.seeks

    handed, seeks = asyncio.run(go())
    expected = {
        "flow stops after the first run": ([(a, 2)], [(c, 10), (b, 5)]),
        "flow stopped before": ([], [(c, 10)]),
        "new generation": ([(a, 2), (b, 6), (c, 10)], [(c, 11)]),
        "paused partition": ([(a, 2), (b, 6), (d, 3), (e, 4)], [(c, 10)]),
    }[case]
    assert (handed, sorted(seeks)) == expected


def test_a_seek_is_made_in_the_consumer_thread() -> None:
    """faust's aiokafka consumer seeks from the event loop's thread, racing the fetch in the
    consumer's (aiokafka's ``fetched_records`` failed with a KeyError in a rebalance storm): the
    worker's consumer makes the seek in the consumer's thread, and re-reads from there as faust does."""
    import asyncio

    import faust
    from faust.types import TP

    tp = TP("in", 0)

    class Thread(_Thread):
        calls = 0

        async def call_thread(self, fun, *args):  # noqa: ANN001
            Thread.calls += 1
            return await fun(*args)

    async def go():
        app = faust.App("fw-compat-test", broker="kafka://127.0.0.1:9", store="memory://")
        faust_compat.install_commit_transport(app)
        consumer = app.consumer
        aio = _AioConsumer({tp: 9})
        consumer._thread = Thread(aio)
        await consumer.seek(tp, 4)
        return aio.seeks, consumer._read_offset[tp]

    seeks, read = asyncio.run(go())
    assert seeks == [(tp, 4)] and Thread.calls == 1 and read == 4
