"""Every use of private faust-streaming, aiokafka and aiohttp API, in one package: this module,
:mod:`.consumer` (the worker's consumer and transport), :mod:`.delivery` (its fetch runs and
drain loop), :mod:`.batches` (the records agents get a fetch at a time) and :mod:`.changelog`
(table writes in batches).

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
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Awaitable, Callable, Iterable, Iterator

import faust
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web import AppRunner
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from faust.web.drivers import aiohttp as faust_aiohttp

from ..http import MAX_HEADERS, MAX_LINE_BYTES, error_response
from .changelog import BatchedChangelogTable
from .consumer import (CommitPointConsumer, CommitPointTransport, CommitSource, FetchTunedConsumerThread,
                       committed_offset, deliver_in_batches, group_start_offset, install_commit_transport)
from .batches import FetchedRun, Record, RecordBatches
from .delivery import DirectDelivery

__all__ = [  # what the rest of agents/ (and the contract test) use
    "REQUIRED", "REQUIRED_INSTANCE", "TESTED_AIOKAFKA", "TESTED_FAUST", "BatchedChangelogTable", "CommitPointConsumer",
    "CommitPointTransport", "CommitSource", "DirectDelivery", "FetchTunedConsumerThread", "FetchedRun", "HardenedWeb",
    "Record", "RecordBatches", "WorkerApp", "agent_actors", "batched_table", "check_versions",
    "committed_offset", "consumer_thread", "deliver_in_batches", "fetch_all_metadata", "fetcher", "group_start_offset",
    "install_commit_transport", "missing", "partition_items", "partition_slice", "recovery_superseded", "supervised_actors",
    "versions",
]

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
    "faust.transport.drivers.aiokafka:Consumer": ("_new_consumer_thread", "_seek"),
    "faust.transport.drivers.aiokafka:Transport": ("Consumer",),
    "faust.transport.drivers.aiokafka:Producer": ("_ensure_producer",),
    "faust.app.base:App": ("_on_agent_error", "transport", "_fetcher", "_new_web"),
    "aiohttp.web_runner:AppRunner": ("_make_server",),
    "aiohttp.web_server:Server": ("__call__",),
    "aiohttp.web_protocol:RequestHandler": ("handle_error",),
    "faust.streams": ("_current_event",),
    "faust.stores.rocksdb:Store": ("_visible_items", "offset_key"),
    "faust.tables.recovery:Recovery": ("signal_recovery_start",),
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


# ---------------------------------------------------------------- table writes


def batched_table(app: faust.App, name: str, **kwargs: Any) -> BatchedChangelogTable:
    """``app.Table(name, **kwargs)``, as a :class:`~.changelog.BatchedChangelogTable`: its writes'
    changelog records go out when the batch calls ``send_changelog_batch``."""
    table = BatchedChangelogTable(app, name=name, beacon=app.tables.beacon, **kwargs)
    app.tables.add(table)
    return table


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


def recovery_superseded(app: Any) -> bool:
    """A newer assignment's table recovery waits to start: faust's ``on_rebalance_complete``
    being sent now is that of a recovery the new rebalance cut short (faust sends it before it
    checks the generation), so the tables do not hold the new assignment's state yet."""
    return app.tables.recovery.signal_recovery_start.is_set()


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
