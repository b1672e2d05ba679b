"""Real-Kafka test fixtures and helpers (registered in tests/conftest.py).

Fixtures
  kafka_bootstrap  (session)  -> "127.0.0.1:19092"
      Reuses a broker that already answers at $FUNNELWATCH_TEST_BOOTSTRAP (default
      127.0.0.1:19092); otherwise starts one with ``deploy/kafka/kafka.sh up`` on a temporary
      KAFKA_DATA_DIR (.run/kafka/test-data-*) and stops it at session end (only if this session started it).
  kafka_admin      (session)  -> KafkaAdmin bound to the bootstrap (sync methods)
  topic_factory    (function) -> make(base, partitions=4, config=None) -> unique topic name
  unique_topics    (function) -> make({"base": partitions, ...}) -> {"base": unique name}
      Topics are created before use (leaders elected) and deleted afterwards, best effort.

Helpers (plain functions; async ones plus sync wrappers that use asyncio.run, so tests do
not need pytest-asyncio)
  await produce(bootstrap, topic, records)            records: [(key|None, value, partition|None)]
  await consume_all(bootstrap, topic, timeout_s=10)   -> list[ConsumerRecord], from the beginning
  produce_sync(...), consume_all_sync(...), broker_answers(bootstrap) ...

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.topics import wait_for_leaders

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

Key = bytes | str | None
Record = tuple  # (key, value, partition) or (key, value, partition, headers)


def bootstrap_address() -> str:
    """The bootstrap address tests use ($FUNNELWATCH_TEST_BOOTSTRAP or 127.0.0.1:19092)."""
    return os.environ.get("FUNNELWATCH_TEST_BOOTSTRAP", DEFAULT_BOOTSTRAP)


def _split(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.rpartition(":")
    return host, int(port)


def port_open(bootstrap: str, timeout_s: float = 1.0) -> bool:
    host, port = _split(bootstrap)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- admin


async def _admin(bootstrap: str, timeout_ms: int = 10_000) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, client_id="funnelwatch-tests"
    )
    await admin.start()
    return admin


async def abroker_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True if a Kafka broker answers a metadata request at ``bootstrap``."""
    if not port_open(bootstrap):
        return False
    try:
        async with asyncio.timeout(timeout_s):
            admin = await _admin(bootstrap, int(timeout_s * 1000))
            try:
                info = await admin.describe_cluster()
                return bool(info.get("brokers"))
            finally:
                await admin.close()
    except Exception:
        return False


def broker_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    return asyncio.run(abroker_answers(bootstrap, timeout_s))


async def create_topics(
    bootstrap: str,
    spec: Mapping[str, int],
    config: Mapping[str, str] | None = None,
    timeout_s: float = 20.0,
) -> None:
    """Create topics ``{name: partitions}`` (replication 1) and wait until every partition
    has a leader. Raises on any error (including "already exists")."""
    if not spec:
        return
    admin = await _admin(bootstrap)
    try:
        resp = await admin.create_topics(
            [
                NewTopic(name, num_partitions=parts, replication_factor=1,
                         topic_configs=dict(config or {}))
                for name, parts in spec.items()
            ],
            timeout_ms=int(timeout_s * 1000),
        )
        errors = [t for t in resp.topic_errors if t[1] != 0]
        if errors:
            raise RuntimeError(f"create_topics failed: {errors}")
        await wait_for_leaders(admin, spec, timeout_s)
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: Iterable[str], timeout_s: float = 10.0) -> None:
    names = list(names)
    if not names:
        return
    admin = await _admin(bootstrap)
    try:
        await admin.delete_topics(names, timeout_ms=int(timeout_s * 1000))
    finally:
        await admin.close()


async def list_topics(bootstrap: str) -> list[str]:
    admin = await _admin(bootstrap)
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def describe_topics(bootstrap: str, names: Sequence[str]) -> list[dict[str, Any]]:
    admin = await _admin(bootstrap)
    try:
        return list(await admin.describe_topics(list(names)))
    finally:
        await admin.close()


class KafkaAdmin:
    """Synchronous admin helper bound to one bootstrap address."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def create_topics(self, spec: Mapping[str, int], config: Mapping[str, str] | None = None) -> None:
        asyncio.run(create_topics(self.bootstrap, spec, config))

    def delete_topics(self, names: Iterable[str]) -> None:
        asyncio.run(delete_topics(self.bootstrap, names))

    def list_topics(self) -> list[str]:
        return asyncio.run(list_topics(self.bootstrap))

    def describe_topics(self, names: Sequence[str]) -> list[dict[str, Any]]:
        return asyncio.run(describe_topics(self.bootstrap, names))

    def partitions(self, topic: str) -> int:
        [t] = self.describe_topics([topic])
        return len(t["partitions"])


# ----------------------------------------------------------------- produce / consume


def _bytes(v: Key) -> bytes | None:
    if v is None or isinstance(v, bytes):
        return v
    return str(v).encode()


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[Record],
    *,
    transactional_id: str | None = None,
) -> list[Any]:
    """Send ``records`` = [(key|None, value bytes, partition|None[, headers])] to ``topic``
    (acks=all) and wait for every ack. ``headers`` is a list of (str, bytes). With
    ``transactional_id`` all records go in one committed transaction.
    Returns the RecordMetadata list, in input order."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=transactional_id is not None,
        transactional_id=transactional_id,
        linger_ms=5,
        client_id="funnelwatch-tests",
    )
    await producer.start()
    try:
        async def send_all() -> list[Any]:
            futs = []
            for rec in records:
                key, value, partition = rec[0], rec[1], rec[2]
                headers = list(rec[3]) if len(rec) > 3 and rec[3] else None
                futs.append(
                    await producer.send(
                        topic, value=_bytes(value), key=_bytes(key),
                        partition=partition, headers=headers,
                    )
                )
            return list(await asyncio.gather(*futs))

        if transactional_id is None:
            return await send_all()
        async with producer.transaction():
            return await send_all()
    finally:
        await producer.stop()


async def _partitions_of(bootstrap: str, topic: str, deadline: float) -> list[int]:
    """Partition ids of an existing topic, waiting until ``deadline`` for it to appear.
    Uses an all-topics metadata request first, so it never auto-creates the topic."""
    admin = await _admin(bootstrap)
    try:
        while True:
            if topic in await admin.list_topics():
                [t] = await admin.describe_topics([topic])
                if t["error_code"] == 0 and t["partitions"]:
                    return sorted(p["partition"] for p in t["partitions"])
            if time.monotonic() > deadline:
                return []
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def consume_all(
    bootstrap: str,
    topic: str,
    timeout_s: float = 10.0,
    *,
    idle_s: float = 1.0,
    min_records: int = 0,
    isolation_level: str = "read_committed",
) -> list[Any]:
    """Read ``topic`` from the beginning of every partition (no consumer group) until no
    record has arrived for ``idle_s`` and at least ``min_records`` were read, or until
    ``timeout_s`` in total. Returns aiokafka ConsumerRecords sorted by (partition, offset);
    each has .key, .value, .partition, .offset, .headers, .timestamp.
    Returns [] if the topic does not exist within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    parts = await _partitions_of(bootstrap, topic, deadline)
    if not parts:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
        client_id="funnelwatch-tests",
    )
    await consumer.start()
    out: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        last = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if now - last >= idle_s and len(out) >= min_records:
                break
            batch = await consumer.getmany(*tps, timeout_ms=200)
            got = [r for recs in batch.values() for r in recs]
            if got:
                out.extend(got)
                last = time.monotonic()
    finally:
        await consumer.stop()
    out.sort(key=lambda r: (r.partition, r.offset))
    return out


def produce_sync(bootstrap: str, topic: str, records: Iterable[Record], **kw: Any) -> list[Any]:
    return asyncio.run(produce(bootstrap, topic, list(records), **kw))


def consume_all_sync(bootstrap: str, topic: str, timeout_s: float = 10.0, **kw: Any) -> list[Any]:
    return asyncio.run(consume_all(bootstrap, topic, timeout_s, **kw))


# ------------------------------------------------------------------------ fixtures


def _start_local_broker(bootstrap: str) -> tuple[dict[str, str], Path]:
    host, port = _split(bootstrap)
    if host not in LOCAL_HOSTS:
        pytest.fail(f"no Kafka answers at {bootstrap}, and only a 127.0.0.1 broker can be started")
    # Under the (git-ignored) run dir, so even a killed session leaves nothing outside
    # the work tree; `make clean` removes it.
    # A non-default port gets its own run dir (pid, log), so it never collides with the
    # broker of `make kafka-up`; the default one shares .run/kafka so `make kafka-down`
    # (and the trap in .ci/run) can always stop what a killed session left running.
    default_run_dir = REPO_ROOT / ".run" / ("kafka" if port == 19092 else f"kafka-{port}")
    run_dir = Path(os.environ.get("KAFKA_RUN_DIR", default_run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="test-data-", dir=run_dir))
    env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_DATA_DIR=str(data_dir),
               KAFKA_RUN_DIR=str(run_dir))
    if port != 19092 and "KAFKA_CONTROLLER_PORT" not in os.environ:
        env["KAFKA_CONTROLLER_PORT"] = str(port + 1)
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(KAFKA_SH), "up"], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        # Lost a race with another session starting a broker on the same ports? Use it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if broker_answers(bootstrap):
                return {}, data_dir
            time.sleep(0.5)
        pytest.fail(
            f"could not start local Kafka ({KAFKA_SH} up, rc={proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    if "started Kafka" not in proc.stdout:
        # kafka.sh found a broker of its own already running (not started by us).
        shutil.rmtree(data_dir, ignore_errors=True)
        return {}, data_dir
    print(f"\n[kafka_fixtures] started local Kafka at {bootstrap} in {time.monotonic() - t0:.1f}s")
    return env, data_dir


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterable[str]:
    bootstrap = bootstrap_address()
    started_env: dict[str, str] = {}
    data_dir: Path | None = None
    if not broker_answers(bootstrap):
        if port_open(bootstrap):
            # Something listens, maybe a broker still starting; give it a moment.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not broker_answers(bootstrap):
                time.sleep(0.5)
        if not broker_answers(bootstrap):
            started_env, data_dir = _start_local_broker(bootstrap)
            deadline = time.monotonic() + 30
            while not broker_answers(bootstrap):
                if time.monotonic() > deadline:
                    pytest.fail(f"Kafka at {bootstrap} started but does not answer metadata requests")
                time.sleep(0.25)
    try:
        yield bootstrap
    finally:
        if started_env:
            subprocess.run(["bash", str(KAFKA_SH), "down"], env=started_env,
                           capture_output=True, text=True, timeout=120)
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> KafkaAdmin:
    return KafkaAdmin(kafka_bootstrap)


class _TopicFactory:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.created: list[str] = []

    @staticmethod
    def unique_name(base: str) -> str:
        return f"{base}-{secrets.token_hex(4)}"

    def __call__(self, base: str, partitions: int = 4, config: Mapping[str, str] | None = None) -> str:
        return self.many({base: partitions}, config)[base]

    def many(self, spec: Mapping[str, int] | Iterable[str], config: Mapping[str, str] | None = None) -> dict[str, str]:
        if not isinstance(spec, Mapping):
            spec = {base: 4 for base in spec}
        names = {base: self.unique_name(base) for base in spec}
        self.created.extend(names.values())
        asyncio.run(create_topics(self.bootstrap, {names[b]: n for b, n in spec.items()}, config))
        return names

    def cleanup(self) -> None:
        try:
            asyncio.run(delete_topics(self.bootstrap, self.created))
        except Exception:
            pass  # best effort
        self.created.clear()


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterable[_TopicFactory]:
    """``topic_factory("activity-sync-events", 4)`` -> "activity-sync-events-1a2b3c4d";
    ``topic_factory.many({"a": 4, "b": 1})`` -> {"a": "a-…", "b": "b-…"}."""
    factory = _TopicFactory(kafka_bootstrap)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def unique_topics(topic_factory: _TopicFactory):
    """``unique_topics({"activity-sync-events": 4, "message-alerts": 1})`` (or a list of base
    names, 4 partitions each) -> {base: unique name}; deleted after the test."""
    return topic_factory.many
