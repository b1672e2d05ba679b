"""Run real ``funnelwatch worker`` subprocesses from tests.

A worker is configured entirely through ``FUNNELWATCH_*`` environment variables; this module
builds that environment, starts the process (its output goes to a log file), waits until it
serves ``GET /funnel`` and stops it again (SIGTERM, then SIGKILL). Every wait is bounded.

    with WorkerPool() as pool:
        w = pool.start("w1", worker_env(app_id=..., bootstrap=..., topics=..., data_dir=...))
        w.wait_ready(60)
        status, body = w.get_json("/funnel")

It also holds the golden-scenario helpers shared by the live-pipeline tests (loading
``basic.jsonl``, splitting it by source, producing it shuffled across partitions, running
``funnelwatch replay --json``) and the consumer-group lag probe.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SCENARIOS = SHARED / "scenarios"
BASIC = SCENARIOS / "basic.jsonl"
BASIC_EXPECTED = SCENARIOS / "basic.expected.json"

#: Topic roles -> settings env var suffix.
TOPIC_ENV = {
    "activity_sync": "TOPIC_ACTIVITY_SYNC",
    "altcraft": "TOPIC_ALTCRAFT",
    "dead_letters": "TOPIC_DEAD_LETTERS",
    "alerts": "TOPIC_ALERTS",
    "funnel_windows": "TOPIC_FUNNEL_WINDOWS",
}


# ----------------------------------------------------------------------------- utilities


def funnelwatch_bin() -> str:
    """The ``funnelwatch`` console script of the running interpreter's venv."""
    cand = Path(sys.executable).parent / "funnelwatch"
    if cand.exists():
        return str(cand)
    cand = REPO_ROOT / ".venv" / "bin" / "funnelwatch"
    if cand.exists():
        return str(cand)
    raise FileNotFoundError("funnelwatch console script not found (pip install -e .)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0 and release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], Any], timeout_s: float, interval_s: float = 0.25,
               desc: str = "condition") -> Any:
    """Call ``pred`` until it returns a truthy value (returned) or ``timeout_s`` passes
    (TimeoutError naming ``desc`` and the last exception, if any)."""
    deadline = time.monotonic() + timeout_s
    last_exc: BaseException | None = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc is not None else ""
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {desc}{extra}")
        time.sleep(interval_s)


def http_get(url: str, timeout_s: float = 5.0, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """``(status, body)`` of a GET; HTTP error statuses are returned, not raised."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def worker_env(
    *,
    app_id: str,
    bootstrap: str,
    topics: Mapping[str, str],
    data_dir: str | os.PathLike[str],
    web_port: int | None = None,
    publish_interval_s: float = 1,
    topic_partitions: int = 4,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``FUNNELWATCH_*`` variables for one worker. ``topics`` maps roles of :data:`TOPIC_ENV`
    (``activity_sync``, ``altcraft``, ``dead_letters``, ``alerts``, ``funnel_windows``) to names."""
    env = {
        "FUNNELWATCH_APP_ID": app_id,
        "FUNNELWATCH_BROKER_URL": f"kafka://{bootstrap}",
        "FUNNELWATCH_STORE": "memory://",
        "FUNNELWATCH_DATA_DIR": str(data_dir),
        "FUNNELWATCH_WEB_HOST": "127.0.0.1",
        "FUNNELWATCH_WEB_PORT": str(web_port if web_port is not None else free_port()),
        "FUNNELWATCH_PUBLISH_INTERVAL_S": str(publish_interval_s),
        "FUNNELWATCH_TOPIC_PARTITIONS": str(topic_partitions),
        "FUNNELWATCH_BROKER_WAIT_S": "20",
    }
    for role, name in topics.items():
        env[f"FUNNELWATCH_{TOPIC_ENV[role]}"] = name
    env.update(extra or {})
    return env


# -------------------------------------------------------------------------------- worker


class ManagedProcess:
    """A subprocess in its own session, output appended to ``log_path``; stopped with SIGTERM,
    then SIGKILL of its process group. Used for workers and for helper servers (Prometheus)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None,
                 inherit_env: bool = True) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.proc: subprocess.Popen | None = None
        self._log_fh: Any = None

    def _full_env(self) -> dict[str, str]:
        base = dict(os.environ) if self.inherit_env else {"PATH": os.environ.get("PATH", "")}
        base.update(self.env)
        return base

    def start(self) -> ManagedProcess:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, env=self._full_env(), cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL,
            stdout=self._log_fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_bytes(self) -> bytes:
        try:
            return self.log_path.read_bytes()
        except FileNotFoundError:
            return b""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def check_alive(self) -> None:
        if not self.alive():
            rc = self.proc.returncode if self.proc is not None else None
            raise RuntimeError(f"{self.name} is not running (rc={rc}); log tail:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL its process group (bounded)."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    self._kill_group(proc)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
            # The leader is gone; make sure nothing it forked in its own group lingers.
            self._kill_group(proc)
            return proc.returncode
        finally:
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        # start_new_session=True made the child the leader of a group whose id is its pid.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if proc.poll() is None:
                proc.kill()


#: The test entry point: ``funnelwatch worker`` plus the faults ``FUNNELWATCH_TEST_*`` asks for.
TEST_WORKER_ARGV = [sys.executable, "-m", "tests.fault_worker"]


class Worker(ManagedProcess):
    """One ``funnelwatch worker`` subprocess, configured by ``FUNNELWATCH_*`` env only."""

    def __init__(self, name: str, env: Mapping[str, str], log_path: Path, argv: list[str] | None = None) -> None:
        super().__init__(name, list(argv or TEST_WORKER_ARGV), log_path, env)

    def _full_env(self) -> dict[str, str]:
        # Hermetic: no FUNNELWATCH_* from the test runner's environment leaks in.
        base = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELWATCH_")}
        base.update(self.env)
        base["PYTHONUNBUFFERED"] = "1"
        return base

    @property
    def port(self) -> int:
        return int(self.env["FUNNELWATCH_WEB_PORT"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        return http_get(self.base_url + path, timeout_s)

    def get_json(self, path: str, timeout_s: float = 5.0) -> tuple[int, Any]:
        status, body = self.get(path, timeout_s)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the log says "Worker ready" and ``GET /funnel`` answers 200."""

        def ready() -> bool:
            self.check_alive()
            if "Worker ready" not in self.log_text():
                return False
            status, _ = self.get("/funnel", timeout_s=3)
            return status == 200

        try:
            wait_until(ready, timeout_s, 0.3, f"worker {self.name} ready")
        except TimeoutError as exc:
            self.check_alive()
            raise TimeoutError(f"{exc}; log tail:\n{self.log_tail()}") from None

    def wait_json(self, path: str, pred: Callable[[Any], bool], timeout_s: float,
                  desc: str | None = None) -> Any:
        """Poll ``GET path`` until it answers 200 with a JSON body satisfying ``pred``; returns
        the body. On timeout an AssertionError shows the last status/body and the log tail."""
        last: list[Any] = [None, None]

        def probe() -> Any:
            self.check_alive()
            status, body = self.get_json(path, timeout_s=5)
            last[:] = [status, body]
            return body if status == 200 and pred(body) else None

        try:
            return wait_until(probe, timeout_s, 0.5, desc or f"{self.name} GET {path}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last answer: {last[0]} {json.dumps(last[1], default=str)[:3000]}\n"
                                 f"log tail:\n{self.log_tail(30)}") from None


class WorkerPool:
    """Starts workers and stops every one of them on exit (also on test failure)."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir
        self.workers: list[Worker] = []

    def start(self, name: str, env: Mapping[str, str], log_dir: Path | None = None) -> Worker:
        base = log_dir or self.log_dir or Path(env["FUNNELWATCH_DATA_DIR"]).parent
        w = Worker(name, env, Path(base) / f"{name}.log")
        self.workers.append(w)
        w.start()
        return w

    def stop_all(self) -> None:
        for w in reversed(self.workers):
            try:
                w.stop()
            except Exception:  # noqa: BLE001 - teardown: stop the others regardless
                pass

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_all()


# ------------------------------------------------------------------------------ scenario


def scenario_lines(path: Path = BASIC) -> list[bytes]:
    """Every non-blank line of a scenario file, as the original bytes (no newline)."""
    return [ln.rstrip(b"\r\n") for ln in path.read_bytes().splitlines() if ln.strip()]


def expected_report(path: Path = BASIC_EXPECTED) -> dict[str, Any]:
    return json.loads(path.read_text())


def source_of_line(line: bytes) -> str:
    """Input topic role for a raw line: altcraft lines carry ``"event_type"``."""
    return "altcraft" if b'"event_type"' in line else "activity_sync"


def _message_of(line: bytes) -> tuple[str, ...] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if "event_type" in obj:
        ed = obj.get("event_data") if isinstance(obj.get("event_data"), dict) else {}
        return ("altcraft", str(obj.get("account_id")), str(ed.get("send_message_id")))
    data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
    return ("activity_sync", str(obj.get("tenantId")), str(data.get("messageId")))


def plan_scenario(lines: Iterable[bytes], partitions: Mapping[str, int], seed: int = 1234
                  ) -> dict[str, list[tuple[None, bytes, int]]]:
    """Shuffle ``lines`` (fixed seed) and assign explicit partitions so that the records of
    one message land on different partitions (per-message round-robin, each message starting
    at its own offset). Returns ``{role: [(None, value, partition), ...]}`` in send order."""
    lines = list(lines)
    random.Random(seed).shuffle(lines)
    plan: dict[str, list[tuple[None, bytes, int]]] = {role: [] for role in partitions}
    starts: dict[tuple[str, ...], int] = {}
    seen: dict[tuple[str, ...], int] = {}
    rr: dict[str, int] = {role: 0 for role in partitions}
    for line in lines:
        role = source_of_line(line)
        n = partitions[role]
        msg = _message_of(line)
        if msg is None:
            part = rr[role] % n
            rr[role] += 1
        else:
            start = starts.setdefault(msg, len(starts))
            i = seen.get(msg, 0)
            seen[msg] = i + 1
            part = (start + i) % n
        plan[role].append((None, line, part))
    return plan


@dataclass(frozen=True)
class Produced:
    """Where one scenario line was written."""

    role: str
    topic: str
    partition: int
    offset: int
    value: bytes


def produce_scenario(bootstrap: str, topics: Mapping[str, str], partitions: Mapping[str, int],
                     path: Path = BASIC, seed: int = 1234) -> list[Produced]:
    """Produce every non-blank line of a scenario file to the two input topics (roles
    ``activity_sync`` / ``altcraft``), shuffled and spread as :func:`plan_scenario` says.
    Returns where each line landed (topic, partition, offset)."""
    from tests.kafka_fixtures import produce_sync

    plan = plan_scenario(scenario_lines(path), partitions, seed)
    out: list[Produced] = []
    for role, records in plan.items():
        if not records:
            continue
        metas = produce_sync(bootstrap, topics[role], records)
        for (_key, value, part), meta in zip(records, metas):
            assert meta.partition == part, (meta.partition, part)
            out.append(Produced(role, topics[role], meta.partition, meta.offset, value))
    return out


def replay_json(*files: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """``funnelwatch replay --json FILE...`` output, parsed."""
    proc = subprocess.run([funnelwatch_bin(), "replay", "--json", *map(str, files)],
                          capture_output=True, timeout=timeout_s, cwd=str(REPO_ROOT))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)


# ------------------------------------------------------------------------- consumer lag


async def agroup_lag(bootstrap: str, group_id: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """Per input partition: end offset - committed offset of ``group_id`` (missing commit
    counts as offset 0)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    topics = list(topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000,
                                client_id="funnelwatch-tests")
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group_id)
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                client_id="funnelwatch-tests")
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    out: dict[tuple[str, int], int] = {}
    for tp in tps:
        meta = committed.get(tp)
        pos = meta.offset if meta is not None and meta.offset >= 0 else 0
        out[(tp.topic, tp.partition)] = ends[tp] - pos
    return out


def group_lag(bootstrap: str, group_id: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    return asyncio.run(agroup_lag(bootstrap, group_id, topics))


def wait_group_lag_zero(bootstrap: str, group_id: str, topics: Iterable[str], timeout_s: float,
                        desc: str | None = None) -> None:
    """Until the group's committed lag is 0 on every partition of ``topics``; on timeout an
    AssertionError shows the last lag per partition."""
    topics = list(topics)
    last: dict = {}

    def caught_up() -> bool:
        last.clear()
        last.update(group_lag(bootstrap, group_id, topics))
        return bool(last) and all(v == 0 for v in last.values())

    try:
        wait_until(caught_up, timeout_s, 1.0, desc or f"consumer group {group_id} lag 0")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: lag {last}") from None


def app_topics(bootstrap: str, app_id: str) -> list[str]:
    """Topics the worker created for itself (internal and changelog topics start with the app id)."""
    from tests.kafka_fixtures import list_topics

    return sorted(t for t in asyncio.run(list_topics(bootstrap)) if t.startswith(app_id))


@contextlib.contextmanager
def fresh_app_topics(bootstrap: str, prefix: str, partitions: Mapping[str, int]) -> Iterator[tuple[str, dict[str, str]]]:
    """A new app id and its own topics (``role -> partitions``), named ``<prefix>-<role>-<suffix>``;
    they and the worker's own topics are deleted afterwards (best effort)."""
    import secrets

    from tests.kafka_fixtures import create_topics, delete_topics

    suffix = secrets.token_hex(4)
    app_id = f"fwtest-{prefix}-{suffix}"
    topics = {role: f"{prefix}-{role.replace('_', '-')}-{suffix}" for role in partitions}
    asyncio.run(create_topics(bootstrap, {topics[r]: n for r, n in partitions.items()}))
    try:
        yield app_id, topics
    finally:
        try:
            asyncio.run(delete_topics(bootstrap, list(topics.values())))
        except Exception:  # noqa: BLE001 - best effort
            pass
        delete_app_topics(bootstrap, app_id)


def delete_app_topics(bootstrap: str, app_id: str) -> None:
    """Best effort: drop the worker's own topics after a test."""
    from tests.kafka_fixtures import delete_topics

    try:
        names = app_topics(bootstrap, app_id)
        if names:
            asyncio.run(delete_topics(bootstrap, names))
    except Exception:  # noqa: BLE001
        pass
