"""Every use of private faust-streaming, aiokafka and aiohttp API, in one package (this module,
:mod:`.delivery`, the consumer's drain loop, and :mod:`.changelog`, table writes in batches).

The rest of ``agents/`` uses faust's public API only and reaches anything private through
the functions and classes here. Each private name this module relies on is listed in
:data:`REQUIRED`; :func:`missing` names those a faust or aiokafka release lacks, and
``tests/test_faust_compat.py`` fails by name when one disappears. pyproject pins
faust-streaming and aiokafka to :data:`TESTED_FAUST` / :data:`TESTED_AIOKAFKA`.

Installed by subclassing where faust allows it: the app (:class:`WorkerApp`, for agent
errors and the web driver), the transport's ``Consumer`` class (:class:`CommitPointConsumer`,
for commits and per-record delivery), set through the public ``app.transport`` setter, and the aiohttp web driver
(:class:`HardenedWeb`: capped request lines and headers, JSON errors for malformed
requests); no instance method is rebound.
"""
from __future__ import annotations

import importlib
import logging
import weakref
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Awaitable, Callable, Hashable, Iterable, Iterator, Mapping, Protocol

import faust
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web import AppRunner
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from aiokafka import TopicPartition
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.web.drivers import aiohttp as faust_aiohttp

from ..http import MAX_HEADERS, MAX_LINE_BYTES, error_response
from .changelog import BatchedChangelogTable
from .delivery import DirectDelivery, Record, RecordBatches

log = logging.getLogger("funnelwatch")

TESTED_FAUST = ("0.15.3",)
TESTED_AIOKAFKA = ("0.14.0",)

#: module:qualname -> private attributes used here (checked by :func:`missing`).
REQUIRED: dict[str, tuple[str, ...]] = {
    "faust.transport.consumer:Consumer": ("_new_offset", "_filter_tps_with_pending_acks",
                                          "_filter_committable_offsets", "_drain_messages", "_add_gap",
                                          "_n_acked", "_wait_next_records", "_to_message", "perform_seek"),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread": ("_ensure_consumer", "call_thread",
                                                                "_create_worker_consumer"),
    "faust.transport.drivers.aiokafka:Consumer": ("_new_consumer_thread",),
    "faust.transport.drivers.aiokafka:Transport": ("Consumer",),
    "faust.transport.drivers.aiokafka:Producer": ("_ensure_producer",),
    "faust.app.base:App": ("_on_agent_error", "transport", "_fetcher", "_new_web"),
    "aiohttp.web_runner:AppRunner": ("_make_server",),
    "aiohttp.web_server:Server": ("__call__",),
    "aiohttp.web_protocol:RequestHandler": ("handle_error",),
    "faust.streams": ("_current_event",),
    "faust.stores.rocksdb:Store": ("_visible_items", "offset_key"),
}
#: instance attributes (set in ``__init__``) checked on a constructed object by the contract test.
REQUIRED_INSTANCE: dict[str, tuple[str, ...]] = {
    "consumer": ("_committed_offset", "_acked", "_acked_index", "_thread", "_read_offset", "_commit_every",
                 "_stopped", "_buffered_partitions", "scheduler"),
    "agent": ("_actors",),
    "supervisor": ("_services",),
    "aiokafka_consumer": ("_client", "_fetch_max_wait_ms"),
    "web": ("_runner",),
    "rocksdb_store": ("_dbs",),
}


def _resolve(path: str) -> Any:
    mod, _, qual = path.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in filter(None, qual.split(".")):
        obj = getattr(obj, part)
    return obj


def missing() -> list[str]:
    """``module:Class.attr`` of every private attribute this module needs and cannot find."""
    out = []
    for path, attrs in REQUIRED.items():
        try:
            obj = _resolve(path)
        except (ImportError, AttributeError):
            out.append(path)
            continue
        out.extend(f"{path}.{a}" for a in attrs if not hasattr(obj, a))
    return out


def versions() -> dict[str, str]:
    out = {}
    for dist in ("faust-streaming", "aiokafka"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def check_versions() -> None:
    """Log a warning when faust or aiokafka is not a version this module is tested on; raise
    (a bug to fix here, not in the field) when a private attribute it needs is gone."""
    gone = missing()
    if gone:
        raise RuntimeError(f"faust/aiokafka private API this worker needs is missing: {', '.join(gone)} "
                           f"(tested on faust-streaming {TESTED_FAUST}, aiokafka {TESTED_AIOKAFKA})")
    v = versions()
    if v["faust-streaming"] not in TESTED_FAUST or v["aiokafka"] not in TESTED_AIOKAFKA:
        log.warning("funnelwatch: running on faust-streaming %s / aiokafka %s; tested on %s / %s",
                    v["faust-streaming"], v["aiokafka"], TESTED_FAUST, TESTED_AIOKAFKA)


# ------------------------------------------------------------------------ the app


AgentErrorHandler = Callable[[Any, BaseException], Awaitable[None]]


class WorkerApp(faust.App):
    """faust's App, plus a hook that sees every agent crash before faust restarts the actor."""

    agent_error_hooks: list[AgentErrorHandler]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent_error_hooks = []

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        for hook in list(self.agent_error_hooks):
            await hook(agent, exc)
        await super()._on_agent_error(agent, exc)

    def _new_web(self) -> Any:
        web = super()._new_web()
        return HardenedWeb(self) if type(web) is faust_aiohttp.Web else web


# ------------------------------------------------------------------------ the web server


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering a request it cannot parse (or a view error it
    did not catch) with our JSON error and headers: no text echoing the request line."""

    __slots__ = ()  # aiohttp's handler has slots: the same layout, so an instance can switch to it

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> Any:
        log.debug("funnelwatch: web: %d for a malformed request (%s)", status, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: cannot send the error")
        text = None
        if isinstance(exc, LineTooLong):
            text = f"request line or a header longer than {MAX_LINE_BYTES} bytes"
        elif status == 400:
            text = "malformed request"
        resp = error_response(status, text)
        resp.force_close()
        return resp


class JsonErrorServer(Server):
    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = JsonErrorRequestHandler  # same object, one method overridden
        return handler


class HardenedAppRunner(AppRunner):
    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorServer  # same object, one method overridden
        return server


class HardenedWeb(faust_aiohttp.Web):
    """faust's aiohttp driver with capped request lines and headers and JSON parse errors."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._runner = HardenedAppRunner(self.web_app, access_log=None, max_line_size=MAX_LINE_BYTES,
                                         max_field_size=MAX_LINE_BYTES, max_headers=MAX_HEADERS)


def fetcher(app: faust.App) -> Any:
    """faust's fetcher service (None before it exists)."""
    return getattr(app, "_fetcher", None)


def consumer_thread(consumer: Any) -> Any:
    """The aiokafka consumer thread service behind faust's consumer (itself if it has none)."""
    return getattr(consumer, "_thread", consumer)


def agent_actors(agent: Any) -> Iterable[Any]:
    return getattr(agent, "_actors", ())


def supervised_actors(supervisor: Any) -> Iterable[Any]:
    return list(getattr(supervisor, "_services", ()))


# ------------------------------------------------------------------- commits


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
    ``FUNNELWATCH_FETCH_MAX_WAIT_MS`` (100)."""

    fetch_max_wait_ms: int = 100

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read when the consumer starts its fetcher
        return consumer


class CommitPointConsumer(DirectDelivery, faust_aiokafka.Consumer):
    """faust's aiokafka consumer committing the offsets of :attr:`commit_point`'s topics from it.

    faust acks records its stream skipped and books offset jumps as compaction gaps
    (``Consumer._new_offset``): it would commit past records no agent processed. Its ack
    bookkeeping still runs (kept bounded); the offset it commits is the commit point's,
    and a partition whose commit point moved is committed even without new acks. Other
    topics (and every topic while no commit point is attached) keep faust's offsets.

    It also hands records to the streams without faust's per-record ``wait_first``
    (:meth:`_drain_messages`, :meth:`_deliver`), for every topic.
    """

    commit_point: CommitSource | None = None
    fetch_max_wait_ms: int = FetchTunedConsumerThread.fetch_max_wait_ms

    def _new_consumer_thread(self) -> Any:
        thread = FetchTunedConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = self.fetch_max_wait_ms
        return thread

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


def install_commit_transport(app: faust.App, *, fetch_max_wait_ms: int = FetchTunedConsumerThread.fetch_max_wait_ms
                             ) -> None:
    """Give ``app`` the transport whose consumer is a :class:`CommitPointConsumer` (before the
    consumer is first built), fetching with ``fetch_max_wait_ms``."""
    transport = CommitPointTransport(app.conf.broker_consumer, app)
    if fetch_max_wait_ms != CommitPointConsumer.fetch_max_wait_ms:
        transport.Consumer = type("CommitPointConsumer", (CommitPointConsumer,),
                                  {"fetch_max_wait_ms": fetch_max_wait_ms})
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


# ---------------------------------------------------------------- table writes


def batched_table(app: faust.App, name: str, **kwargs: Any) -> BatchedChangelogTable:
    """``app.Table(name, **kwargs)``, as a :class:`~.changelog.BatchedChangelogTable`: its writes'
    changelog records go out when the batch calls ``send_changelog_batch``."""
    table = BatchedChangelogTable(app, name=name, beacon=app.tables.beacon, **kwargs)
    app.tables.add(table)
    return table


def use_partition_of(event: Any) -> None:
    """Make ``event`` faust's "current event": table reads and writes then go to the partition
    of ``event``'s record (faust takes it from there: the rocksdb store reads only that
    partition's db, a write goes to that partition of the changelog)."""
    _current_event.set(weakref.ref(event))


def clear_current_event() -> None:
    _current_event.set(None)


# ------------------------------------------------------------------- aiokafka


async def fetch_all_metadata(consumer: Any) -> Any:
    """Cluster metadata of every topic from a plain (group-less) aiokafka consumer."""
    return await consumer._client.fetch_all_metadata()


# --------------------------------------------------------------------------- table partitions
def _partition_db(table: Any, partition: int) -> tuple[Any, Any] | None:
    """``(store, db)`` of a rocksdb-backed table's partition (None: another store, or not open)."""
    store = table.data
    dbs = getattr(store, "_dbs", None)
    if not isinstance(dbs, dict):
        return None
    return store, dbs.get(partition)


def partition_items(table: Any, partitions: set[int], partition_of: Callable[[str], int]
                    ) -> Iterator[tuple[int, bytes, bytes]]:
    """``(partition, key, value)`` of the stored entries of ``partitions`` only. The rocksdb store
    keeps a db per partition: only those dbs are read. Other stores (memory): every entry is
    looked at, and those of other partitions left out."""
    if not partitions:
        return
    first = _partition_db(table, next(iter(partitions)))
    if first is None:
        for key, value in table.data.items():
            p = partition_of(key.decode())
            if p in partitions:
                yield p, key, value
        return
    store = first[0]
    for p in sorted(partitions):
        db = store._dbs.get(p)
        if db is not None:
            for key, value in store._visible_items(db):
                yield p, key, value


def partition_slice(table: Any, partition: int, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]] | None:
    """Up to ``limit`` stored ``(key, value)`` of a rocksdb-backed table's ``partition`` after
    ``after`` in key order (None: another store; the caller lists keys itself)."""
    found = _partition_db(table, partition)
    if found is None:
        return None
    store, db = found
    if db is None:
        return []
    out: list[tuple[bytes, bytes]] = []
    skip = store.offset_key
    for key, value in (db.items(from_key=after) if after is not None else db.items()):
        if key == after or key == skip:
            continue
        out.append((key, value))
        if len(out) >= limit:
            break
    return out
