#!/usr/bin/env python3
"""Live-pipeline throughput, cost and latency against the real local Kafka broker.

One run, on the same pre-produced topics (``funnelwatch generate`` traffic, ≥ ``--events``
records, both input topics with 4 partitions, records spread over partitions at random):

  (a) ceiling: a bare aiokafka consumer (large fetches, ``getmany``) + ``orjson.loads`` of
      every record of both topics, in a child process (best of ``--raw-repeat``);
  (b) one ``funnelwatch worker`` (subprocess, ``memory://`` store, fresh app id) running the
      full pipeline until the consumer group's committed offsets have reached the end of
      both input topics AND of ``<app_id>-lifecycle-events`` (aiokafka admin, polled every
      ``--poll-s``); timed from the first partition assignment (``/health/ready`` lists
      partitions) to that moment. Then: correctness (``/funnel`` windows == ``funnelwatch
      replay --json`` windows of the same records) and event-to-funnel latency at a fixed
      offered rate (``--latency-fraction`` of the measured (b) rate, ``--latency-s`` seconds);
  (c) the same catch-up with two workers (fresh app id), plus the same correctness check;
  (f) the minimal faust agent floor (``bench/faust_floor.py``: one agent per input topic doing
      only ``async for batch in stream.take_events(1000, within=0.05): pass``, the worker's app
      settings, faust's stock consumer), timed like (b) from the group's first stable
      assignment to committed offsets at the end of both input topics;
  (g) the same floor with the worker's consumer class (``faust_compat.CommitPointConsumer``,
      no commit point: its per-record delivery only);
  (r) (b) with the ``rocksdict://`` store;
  (q) the Quix Streams reference app (``bench/quix_app.py``, the ``bench`` extra): normalize,
      group_by message key through a repartition topic, ``streams.lifecycle.apply`` folded into
      per-message RocksDB state with changelog; timed until its committed offsets reached the end
      of the input and repartition topics.

Prints events/s of each, the ratios b/a, c/b, worker/Quix (b/q, r/q) and worker/faust floor
(b/f, r/f), worker CPU seconds (utime+stime from
/proc/<pid>/stat) and peak RSS (VmHWM), the latency p50/p99, and writes everything to
``.bench/pipeline-<timestamp>.json``. ``--profile`` adds a separate (unmeasured) catch-up
run sampled with py-spy and prints where the worker's time goes.

Every wait is bounded (``--phase-timeout``, default 900 s per phase); workers are stopped
SIGTERM → SIGKILL of their own process group, and every topic the run created is deleted
(``--keep-topics`` keeps them).

    .venv/bin/python bench/bench_pipeline.py [--events 500000] [--phases abcfgqr] [--skip-two] [--profile]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
INPUT_PARTITIONS = 4


# --------------------------------------------------------------------------- small helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_cpu_s(pid: int | None) -> float | None:
    """utime + stime of a live process, seconds (None when it is gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15 of stat(5)
    except (OSError, IndexError, ValueError):
        return None


def proc_status_kb(pid: int | str, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def host_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs; /proc/stat)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
    return (sum(f[:8]) - idle) / CLK_TCK


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def port_open(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def ensure_broker(bootstrap: str) -> None:
    if port_open(bootstrap):
        return
    if bootstrap != "127.0.0.1:19092":
        raise SystemExit(f"bench: no broker answers at {bootstrap}")
    log("broker not answering: deploy/kafka/kafka.sh up")
    subprocess.run([str(ROOT / "deploy" / "kafka" / "kafka.sh"), "up"], check=True, timeout=300)
    if not port_open(bootstrap):
        raise SystemExit("bench: broker still not answering after kafka.sh up")


def kafka_pid() -> int | None:
    try:
        pid = int((ROOT / ".run" / "kafka" / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


def git_info() -> dict[str, Any]:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""
    dirty = run("status", "--porcelain", "--", "agents", "streams").splitlines()
    return {"head": run("rev-parse", "--short", "HEAD"), "dirty_agents_streams": dirty,
            "diff_sha1": __import__("hashlib").sha1(run("diff", "--", "agents", "streams").encode()).hexdigest()[:12]
            if dirty else None}


# --------------------------------------------------------------------------- data


def generate_records(events: int, seed: int, now_us: int) -> list[bytes]:
    """At least ``events`` records of ``agents.generate`` traffic (whole messages)."""
    from agents.generate import Mix, generate

    sample = sum(1 for _ in generate(Mix(messages=2000, seed=seed), now_us))
    messages = math.ceil(events / (sample / 2000) * 1.01)
    while True:
        recs = list(generate(Mix(messages=messages, seed=seed), now_us))
        if len(recs) >= events:
            return recs
        messages = math.ceil(messages * events / len(recs) * 1.01) + 1


def probe_record(tenant: str, mid: str, ts_us: int) -> bytes:
    from streams.timeparse import format_ts_us

    return orjson.dumps({
        "version": "1.0", "timestamp": format_ts_us(ts_us), "tenantId": tenant,
        "workflowContext": {}, "customContext": {}, "kind": "outbound-sms",
        "data": {"usage": [{"uom": "sms-segments-au", "qty": 1}], "recipient": "+61400000000",
                 "body": "probe", "messageId": mid},
        "pii": ["body", "recipient"]})


# --------------------------------------------------------------------------- kafka admin


class Kafka:
    """One admin client + one group-less consumer for end offsets, reused by every probe."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = None
        self.consumer = None

    async def __aenter__(self) -> "Kafka":
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=15000,
                                         client_id="funnelwatch-bench")
        await self.admin.start()
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                         enable_auto_commit=False, client_id="funnelwatch-bench")
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def create_topics(self, names: list[str], partitions: int) -> None:
        from aiokafka.admin import NewTopic

        await self.admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            parts = await self.partitions(names)
            if all(len(parts.get(n, ())) == partitions for n in names):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"topics {names} not ready")

    async def partitions(self, names: list[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for t in await self.admin.describe_topics(names):
            if t.get("error_code", 0) == 0 and t.get("partitions"):
                if all(p.get("leader", -1) >= 0 for p in t["partitions"]):
                    out[t["topic"]] = sorted(p["partition"] for p in t["partitions"])
        return out

    async def end_offsets(self, names: list[str]) -> dict[Any, int]:
        from aiokafka import TopicPartition

        parts = await self.partitions(names)
        tps = [TopicPartition(t, p) for t, ps in parts.items() for p in ps]
        return await self.consumer.end_offsets(tps) if tps else {}

    async def committed(self, group: str) -> dict[Any, int]:
        got = await self.admin.list_consumer_group_offsets(group)
        return {tp: m.offset for tp, m in got.items() if m is not None and m.offset >= 0}

    async def delete_matching(self, needle: str, groups: list[str]) -> list[str]:
        """Delete every topic whose name contains ``needle``, and the given consumer groups."""
        names = [t for t in await self.admin.list_topics() if needle in t]
        if names:
            try:
                await self.admin.delete_topics(names)
            except Exception as exc:  # noqa: BLE001
                log(f"topic cleanup failed: {exc!r}")
        if groups and hasattr(self.admin, "delete_consumer_groups"):
            try:
                await self.admin.delete_consumer_groups(groups)
            except Exception as exc:  # noqa: BLE001 - best effort: empty groups expire anyway
                log(f"group cleanup failed: {exc!r}")
        return names


async def produce_all(bootstrap: str, records: list[bytes], t_as: str, t_ac: str) -> float:
    from agents.generate import produce

    t = time.perf_counter()
    await produce(records, bootstrap, t_as, t_ac, None)
    return time.perf_counter() - t


# --------------------------------------------------------------------------- (a) ceiling


def raw_consume_child(args: argparse.Namespace) -> int:
    """Child process: consume both topics from the beginning, orjson.loads each value."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> dict[str, Any]:
        c = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_wait_ms=100,
                             client_id="funnelwatch-bench-raw")
        await c.start()
        try:
            tps = [TopicPartition(t, p) for t in args.topics.split(",") for p in range(INPUT_PARTITIONS)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            ends = await c.end_offsets(tps)
            total = sum(ends.values())
            n = nbytes = bad = 0
            loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
            cpu0, t0 = time.process_time(), time.perf_counter()
            deadline = t0 + args.timeout
            while n < total:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"raw consume: {n}/{total} after {args.timeout}s")
                batch = await c.getmany(timeout_ms=500, max_records=100_000)
                for recs in batch.values():
                    for r in recs:
                        v = r.value
                        nbytes += len(v)
                        try:
                            loads(v)
                        except JSONDecodeError:
                            bad += 1
                    n += len(recs)
            dt = time.perf_counter() - t0
            return {"events": n, "bytes": nbytes, "undecodable": bad, "seconds": dt, "events_per_s": n / dt,
                    "cpu_s": time.process_time() - cpu0, "peak_rss_mb": (proc_status_kb("self", "VmHWM") or 0) / 1024}
        finally:
            await c.stop()

    print(json.dumps(asyncio.run(run())))
    return 0


def run_raw(bootstrap: str, topics: list[str], timeout_s: float) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--raw-consume-child", "--bootstrap", bootstrap,
                           "--topics", ",".join(topics), "--timeout", str(timeout_s)],
                          capture_output=True, text=True, timeout=timeout_s + 60, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"raw consume child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- workers


class WorkerRun:
    """N worker subprocesses of one fresh app id on the shared input topics (or on ``inputs``)."""

    def __init__(self, label: str, n: int, ctx: "Ctx", inputs: tuple[str, str] | None = None,
                 store: str = "memory://") -> None:
        from tests.worker_harness import Worker, free_port, funnelwatch_bin, worker_env

        self.label, self.ctx, self.store = label, ctx, store
        self.app_id = f"{ctx.prefix}-{label}"
        self.lifecycle_topic = f"{self.app_id}-lifecycle-events"
        self.t_as, self.t_ac = inputs or (ctx.t_as, ctx.t_ac)
        self.topics = {"activity_sync": self.t_as, "altcraft": self.t_ac,
                       "dead_letters": f"{self.app_id}-dlq", "alerts": f"{self.app_id}-alerts",
                       "funnel_windows": f"{self.app_id}-windows"}
        self.workers = []
        for i in range(n):
            env = worker_env(app_id=self.app_id, bootstrap=ctx.bootstrap, topics=self.topics,
                             data_dir=ctx.tmp / label / f"w{i}", web_port=free_port(),
                             publish_interval_s=10, topic_partitions=INPUT_PARTITIONS,
                             extra={"FUNNELWATCH_LOG_LEVEL": ctx.log_level, "FUNNELWATCH_STORE": store,
                                    **ctx.code_env})
            # The production entry point (`funnelwatch worker`), also for a `--rev` export's code.
            self.workers.append(Worker(f"{label}-w{i}", env, ctx.tmp / label / f"w{i}.log",
                                       argv=[funnelwatch_bin(), "worker"]))

    def output_topics(self) -> list[str]:
        return [self.topics[r] for r in ("dead_letters", "alerts", "funnel_windows")]

    def start(self) -> float:
        t = time.monotonic()
        for w in self.workers:
            w.start()
        return t

    def stop(self) -> None:
        for w in reversed(self.workers):
            try:
                w.stop(timeout_s=15)
            except Exception:  # noqa: BLE001
                pass
        # Keep the worker logs (the temp dir goes away).
        logs = self.ctx.out_dir / f"logs-{self.ctx.stamp}"
        for w in self.workers:
            if w.log_path.exists():
                logs.mkdir(exist_ok=True)
                shutil.copy(w.log_path, logs / w.log_path.name.replace("w", f"{self.label}-w", 1))

    def log_tails(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log_tail(25)}" for w in self.workers)


async def http_json(session: Any, url: str, timeout_s: float = 5.0) -> tuple[int, Any]:
    import aiohttp

    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            body = await resp.read()
            try:
                return resp.status, orjson.loads(body)
            except orjson.JSONDecodeError:
                return resp.status, body
    except Exception as exc:  # noqa: BLE001 - not up yet / restarting
        return 0, repr(exc)


async def catch_up(run: WorkerRun, kafka: Kafka, timeout_s: float, poll_s: float,
                   on_assigned: Any = None, stop_after_s: float | None = None) -> dict[str, Any]:
    """Start the workers and time them from first assignment until group lag is 0 on the
    input topics and on the lifecycle topic (committed offsets)."""
    import aiohttp

    ctx = run.ctx
    input_ends = ctx.input_ends
    total = sum(input_ends.values())
    res: dict[str, Any] = {"app_id": run.app_id, "workers": len(run.workers), "events": total}
    await kafka.create_topics(run.output_topics(), INPUT_PARTITIONS)  # as a deployment would have them
    t_spawn = run.start()
    deadline = t_spawn + timeout_s
    assigned: dict[str, float] = {}
    ready: dict[str, float] = {}
    samples: list[tuple[float, int, int | None]] = []
    cpu0: dict[str, float | None] = {}
    kcpu0 = proc_cpu_s(kafka_pid())
    host0 = self0 = 0.0
    t0 = t_end = None
    last_health = 0.0
    async with aiohttp.ClientSession() as http:
        while True:
            now = time.monotonic()
            if now > deadline:
                res["timeout"] = True
                log(f"{run.label}: TIMEOUT after {timeout_s:.0f}s\n{run.log_tails()}")
                break
            dead = [w for w in run.workers if not w.alive()]
            if dead:
                res["crashed"] = {w.name: w.log_tail(40) for w in dead}
                log(f"{run.label}: worker(s) {[w.name for w in dead]} exited\n{run.log_tails()}")
                break
            if len(assigned) < len(run.workers) or len(ready) < len(run.workers):
                if t0 is None or now - last_health >= 1.0:
                    last_health = now
                    for w in run.workers:
                        if w.name in assigned and w.name in ready:
                            continue
                        status, body = await http_json(http, w.base_url + "/health/ready", 2)
                        if isinstance(body, dict) and body.get("lag") and w.name not in assigned:
                            assigned[w.name] = time.monotonic()
                            cpu0[w.name] = proc_cpu_s(w.pid)
                            if t0 is None:
                                t0 = assigned[w.name]
                                kcpu0 = proc_cpu_s(kafka_pid())
                                host0, self0 = host_busy_s(), proc_cpu_s(os.getpid()) or 0.0
                                if on_assigned is not None:
                                    on_assigned(w)
                        if status == 200 and w.name not in ready:
                            ready[w.name] = time.monotonic()
            if t0 is None:
                await asyncio.sleep(0.05)
                continue
            committed = await kafka.committed(run.app_id)
            in_done = sum(min(committed.get(tp, 0), end) for tp, end in input_ends.items())
            lc_lag = None
            if in_done >= total:
                lc_ends = await kafka.end_offsets([run.lifecycle_topic])
                if lc_ends:
                    lc_lag = sum(max(0, end - committed.get(tp, 0)) for tp, end in lc_ends.items())
            t = time.monotonic()
            samples.append((t, in_done, lc_lag))
            if in_done >= total and lc_lag == 0:
                t_end = t
                break
            if stop_after_s is not None and t - t0 >= stop_after_s:
                res["stopped_after_s"] = t - t0  # enough (profile run): not a timeout
                break
            await asyncio.sleep(poll_s)
    res["cpu_s"] = {}
    res["cpu_s_total"] = {}
    res["peak_rss_mb"] = {}
    for w in run.workers:
        c = proc_cpu_s(w.pid)
        res["cpu_s_total"][w.name] = c
        res["cpu_s"][w.name] = c - cpu0[w.name] if c is not None and cpu0.get(w.name) is not None else None
        res["peak_rss_mb"][w.name] = (proc_status_kb(w.pid, "VmHWM") or 0) / 1024
    kc = proc_cpu_s(kafka_pid())
    res["broker_cpu_s"] = kc - kcpu0 if kc is not None and kcpu0 is not None else None
    if t0 is not None:
        # Everything else the machine did meanwhile (other processes competing for the CPUs).
        busy = host_busy_s() - host0
        res["bench_process_cpu_s"] = (proc_cpu_s(os.getpid()) or 0.0) - self0
        res["host_busy_cpu_s"] = busy
        res["other_processes_cpu_s"] = max(0.0, busy - sum(v for v in res["cpu_s"].values() if v is not None)
                                           - (res["broker_cpu_s"] or 0.0) - res["bench_process_cpu_s"])
    res["spawn_to_first_assignment_s"] = t0 - t_spawn if t0 else None
    res["assigned_after_s"] = {k: v - t_spawn for k, v in assigned.items()}
    res["ready_after_s"] = {k: v - t_spawn for k, v in ready.items()}
    catch_up_figures(res, total, samples, t_spawn, t0, t_end,
                     sum(v for v in res["cpu_s"].values() if v is not None))
    return res


class AppRun:
    """One reference app (faust floor, Quix) as a subprocess of a fresh consumer group on the
    shared input topics; stopped SIGTERM → SIGKILL of its process group like the workers."""

    def __init__(self, label: str, ctx: "Ctx", argv: list[str], group: str,
                 internal_prefix: str | None = None, changelog_prefix: str | None = None) -> None:
        from tests.worker_harness import ManagedProcess

        self.label, self.ctx, self.group = label, ctx, group
        #: internal topics the group also consumes (Quix's ``repartition__<group>--...``): the
        #: catch-up ends when their committed offsets have reached their ends too.
        self.internal_prefix = internal_prefix
        self.changelog_prefix = changelog_prefix  # its state changelog topics: records written, counted
        env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELWATCH_")}
        env.update({"PYTHONUNBUFFERED": "1", **ctx.code_env})
        self.proc = ManagedProcess(label, argv, ctx.tmp / label / f"{label}.log", env=env, inherit_env=False)
        self.workers = [self.proc]

    def start(self) -> float:
        t = time.monotonic()
        (self.ctx.tmp / self.label).mkdir(parents=True, exist_ok=True)
        self.proc.start()
        return t

    def stop(self) -> None:
        try:
            self.proc.stop(timeout_s=15)
        except Exception:  # noqa: BLE001
            pass
        if self.proc.log_path.exists():
            logs = self.ctx.out_dir / f"logs-{self.ctx.stamp}"
            logs.mkdir(exist_ok=True)
            shutil.copy(self.proc.log_path, logs / self.proc.log_path.name)

    def log_tails(self) -> str:
        return f"--- {self.label}\n{self.proc.log_tail(25)}"


async def group_assigned(kafka: Kafka, group: str) -> bool:
    """The group is ``Stable`` with at least one member (its partitions are assigned)."""
    try:
        [resp] = await kafka.admin.describe_consumer_groups([group])
    except Exception:  # noqa: BLE001 - coordinator not known yet
        return False
    for g in resp.groups:  # (error_code, group_id, state, protocol_type, protocol, members, ...)
        if g[1] == group and g[0] == 0 and g[2] == "Stable" and g[5]:
            return True
    return False


async def app_catch_up(run: AppRun, kafka: Kafka, timeout_s: float, poll_s: float) -> dict[str, Any]:
    """:func:`catch_up` for a reference app: timed from the group's first stable assignment
    (broker-side, polled every 50 ms) until its committed offsets reached the end of both
    input topics and of its internal topics (``run.internal_prefix``). Same result keys."""
    ctx = run.ctx
    input_ends = ctx.input_ends
    total = sum(input_ends.values())
    res: dict[str, Any] = {"app_id": run.group, "workers": 1, "events": total}
    name, pid = run.proc.name, None
    t_spawn = run.start()
    pid = run.proc.pid
    deadline = t_spawn + timeout_s
    samples: list[tuple[float, int, int | None]] = []
    cpu0 = kcpu0 = None
    host0 = self0 = 0.0
    t0 = t_end = None
    while True:
        now = time.monotonic()
        if now > deadline:
            res["timeout"] = True
            log(f"{run.label}: TIMEOUT after {timeout_s:.0f}s\n{run.log_tails()}")
            break
        if not run.proc.alive():
            res["crashed"] = {name: run.proc.log_tail(40)}
            log(f"{run.label}: exited\n{run.log_tails()}")
            break
        if t0 is None:
            if await group_assigned(kafka, run.group):
                t0 = time.monotonic()
                cpu0, kcpu0 = proc_cpu_s(pid), proc_cpu_s(kafka_pid())
                host0, self0 = host_busy_s(), proc_cpu_s(os.getpid()) or 0.0
            else:
                await asyncio.sleep(0.05)
                continue
        committed = await kafka.committed(run.group)
        in_done = sum(min(committed.get(tp, 0), end) for tp, end in input_ends.items())
        lag = None
        if in_done >= total:
            lag = 0
            if run.internal_prefix:
                internal = [t for t in await kafka.admin.list_topics() if t.startswith(run.internal_prefix)]
                ends = await kafka.end_offsets(internal) if internal else {}
                lag = sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items())
                res["internal_topics"] = sorted(internal)
        t = time.monotonic()
        samples.append((t, in_done, lag))
        if in_done >= total and lag == 0:
            t_end = t
            break
        await asyncio.sleep(poll_s)
    c = proc_cpu_s(pid)
    if t_end is not None and run.changelog_prefix:
        changelogs = [t for t in await kafka.admin.list_topics() if t.startswith(run.changelog_prefix)]
        res["changelog_records"] = sum((await kafka.end_offsets(changelogs)).values()) if changelogs else 0
    res["cpu_s_total"] = {name: c}
    res["cpu_s"] = {name: c - cpu0 if c is not None and cpu0 is not None else None}
    res["peak_rss_mb"] = {name: (proc_status_kb(pid, "VmHWM") or 0) / 1024}
    kc = proc_cpu_s(kafka_pid())
    res["broker_cpu_s"] = kc - kcpu0 if kc is not None and kcpu0 is not None else None
    if t0 is not None:
        busy = host_busy_s() - host0
        res["bench_process_cpu_s"] = (proc_cpu_s(os.getpid()) or 0.0) - self0
        res["host_busy_cpu_s"] = busy
        res["other_processes_cpu_s"] = max(0.0, busy - (res["cpu_s"][name] or 0.0) - (res["broker_cpu_s"] or 0.0)
                                           - res["bench_process_cpu_s"])
    res["spawn_to_first_assignment_s"] = t0 - t_spawn if t0 else None
    catch_up_figures(res, total, samples, t_spawn, t0, t_end, res["cpu_s"][name] or 0.0)
    return res


def catch_up_figures(res: dict[str, Any], total: int, samples: list, t_spawn: float, t0: float | None,
                     t_end: float | None, cpu_s_sum: float) -> None:
    """Rates of a catch-up into ``res``: events/s from the first assignment (and from spawn), the
    ingest stage alone, CPU per event; a partial rate when it did not finish; the samples."""
    if t_end is not None and t0 is not None:
        dt = t_end - t0
        res["seconds"] = dt
        res["events_per_s"] = total / dt
        res["events_per_s_from_spawn"] = total / (t_end - t_spawn)
        # Ingest stage alone: slope of committed input offsets between 10 % and 90 % of the input
        # (the lifecycle topic may still lag behind; the end-to-end figure is events_per_s).
        def first(frac: float) -> tuple[float, int] | None:
            return next(((t, d) for t, d, _ in samples if d >= frac * total), None)
        a, b = first(0.10), first(0.90)
        if a and b and b[0] > a[0]:
            res["ingest_events_per_s"] = (b[1] - a[1]) / (b[0] - a[0])
        res["input_done_after_s"] = next((t for t, d, _ in samples if d >= total), t_end) - t0
        res["cpu_s_sum"] = cpu_s_sum
        res["cpu_us_per_event"] = cpu_s_sum / total * 1e6
    elif t0 is not None and samples:
        t_last, done_last, _ = samples[-1]
        res["partial"] = {"events_done": done_last, "seconds": t_last - t0,
                          "events_per_s": done_last / (t_last - t0) if t_last > t0 else None}
    res["samples"] = [(round(t - (t0 or t_spawn), 3), d, lc) for t, d, lc in samples]


async def wait_serving(run: WorkerRun, timeout_s: float) -> None:
    """Start the workers and wait until every one is ready and answers ``/funnel`` 200."""
    import aiohttp

    run.start()
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        for w in run.workers:
            while True:
                w.check_alive()
                s1, _ = await http_json(http, w.base_url + "/health/ready", 2)
                s2 = (await http_json(http, w.base_url + "/funnel", 5))[0] if s1 == 200 else 0
                if s1 == 200 and s2 == 200:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{w.name} not serving after {timeout_s:.0f}s:\n{w.log_tail(20)}")
                await asyncio.sleep(0.2)


async def worker_metrics(http: Any, w: Any) -> dict[str, float]:
    status, body = 0, b""
    import aiohttp

    async with http.get(w.base_url + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        status, body = resp.status, await resp.text()
    out: Counter[str] = Counter()
    for line in body.splitlines():
        if line.startswith("#") or "{" not in line and " " not in line:
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in ("funnel_events_total", "funnel_events_rejected_total", "funnel_duplicates_total",
                    "funnel_alerts_total", "funnel_inflight_messages", "funnel_alerts_suppressed_total"):
            try:
                val = float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
            out[name] += val
            if name == "funnel_events_rejected_total" and 'source="unknown"' in line:
                out["rejected_without_source"] += val
    out["ingested_records"] = out["funnel_events_total"] + out["rejected_without_source"]
    return dict(out)


async def check_funnel(run: WorkerRun, expected: list[dict]) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        body = None
        for _ in range(40):  # a worker answers 503 while a peer rebalances: bounded retries
            status, body = await http_json(http, run.workers[0].base_url + "/funnel", 30)
            if status == 200:
                break
            await asyncio.sleep(0.5)
        metrics = {w.name: await worker_metrics(http, w) for w in run.workers}
        local = {}
        for w in run.workers:
            st, lb = await http_json(http, w.base_url + "/funnel?local=1", 30)
            local[w.name] = sum(r["entered"] for r in lb["windows"]) if st == 200 and isinstance(lb, dict) else st
    got = body.get("windows") if isinstance(body, dict) else None
    ok = got == expected
    out: dict[str, Any] = {"ok": ok, "rows": len(got or []), "expected_rows": len(expected), "metrics": metrics,
                           "entered_total": sum(r["entered"] for r in got or []),
                           "expected_entered_total": sum(r["entered"] for r in expected),
                           "entered_local_share": local}
    if not ok and got is not None:
        g = {(r["window_start"], r["tenant"], r["channel"]): r for r in got}
        e = {(r["window_start"], r["tenant"], r["channel"]): r for r in expected}
        diff = [k for k in sorted(set(g) | set(e)) if g.get(k) != e.get(k)]
        out["diff_rows"] = len(diff)
        out["diff"] = [{"key": list(k), "worker": g.get(k), "replay": e.get(k)} for k in diff[:10]]
    elif got is None:
        out["error"] = str(body)[:500]
    return out


async def latency_probe(run: WorkerRun, rate: float, seconds: float, probe_interval_s: float,
                        poll_s: float, seed: int, warmup_s: float, step: str) -> dict[str, Any]:
    """Offer ``rate`` events/s (probes included) of fresh generated traffic for ``warmup_s +
    seconds``; during the last ``seconds`` one probe message (a new message of a tenant used
    only by this step) goes out every ``probe_interval_s``. ``/funnel?tenant=<probe tenant>``
    is polled every ``poll_s``; the k-th probe's latency is the time ``entered`` reached k
    minus the time the k-th probe was produced (probes may be applied out of order across
    partitions, so this pairs by rank — fine for percentiles)."""
    import aiohttp
    from aiokafka import AIOKafkaProducer

    from agents.generate import Mix, generate
    from streams.events import CanonicalEvent
    from streams.normalize import normalize

    ctx = run.ctx
    tenant = f"probe-{ctx.prefix}-{step}"
    assert type(normalize(probe_record(tenant, "x", time.time_ns() // 1000))) is CanonicalEvent
    total_s = warmup_s + seconds
    probe_rate = 1.0 / probe_interval_s
    load_rate = max(0.0, rate - probe_rate * seconds / total_s)  # the probes are part of the offered rate
    n_load = int(load_rate * total_s)
    load = list(generate(Mix(messages=max(1, int(n_load / 2.8 * 1.05)), seed=seed, span_s=60.0),
                         time.time_ns() // 1000))[:n_load]
    producer = AIOKafkaProducer(bootstrap_servers=ctx.bootstrap, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    sent_at: list[float] = []
    seen_at: dict[int, float] = {}
    stop = asyncio.Event()
    load_sent = 0

    async def offer() -> None:
        nonlocal load_sent
        t0 = time.monotonic()
        next_probe = t0 + warmup_s
        k = 0
        while True:
            now = time.monotonic()
            el = now - t0
            if el >= total_s:
                break
            due = min(len(load), int(el * load_rate))
            while load_sent < due:
                raw = load[load_sent]
                await producer.send(run.t_ac if b'"event_type"' in raw else run.t_as, raw)
                load_sent += 1
            if now >= next_probe:
                sent_at.append(time.monotonic())
                await producer.send(run.t_as, probe_record(tenant, f"p{k}", time.time_ns() // 1000))
                k += 1
                next_probe += probe_interval_s
            await asyncio.sleep(0.002)
        await producer.flush()

    async def poll(http: Any) -> None:
        url = run.workers[0].base_url + f"/funnel?tenant={tenant}"
        count = 0
        while not stop.is_set():
            t_req = time.monotonic()
            status, body = await http_json(http, url, 5)
            t = time.monotonic()
            if status == 200 and isinstance(body, dict):
                c = sum(r["entered"] for r in body["windows"])
                for i in range(count + 1, c + 1):
                    seen_at[i] = (t_req + t) / 2  # midpoint of the request
                count = max(count, c)
            await asyncio.sleep(max(0.0, poll_s - (time.monotonic() - t_req)))

    cpu0 = {w.name: proc_cpu_s(w.pid) for w in run.workers}
    async with aiohttp.ClientSession() as http:
        poller = asyncio.create_task(poll(http))
        t_start = time.monotonic()
        try:
            await offer()
            offered_s = time.monotonic() - t_start
            deadline = time.monotonic() + 120
            while len(seen_at) < len(sent_at) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await poller
            await producer.stop()
    lat = [seen_at[i + 1] - sent_at[i] for i in range(len(sent_at)) if (i + 1) in seen_at]
    cpu = {w.name: (proc_cpu_s(w.pid) or 0) - (cpu0[w.name] or 0) for w in run.workers}
    return {"offered_rate_target": rate, "offered_rate": (load_sent + len(sent_at)) / offered_s,
            "seconds": offered_s, "warmup_s": warmup_s, "load_events": load_sent, "probes": len(sent_at),
            "probes_seen": len(lat), "probe_interval_s": probe_interval_s, "poll_s": poll_s,
            "p50_ms": (percentile(lat, 50) or 0) * 1000 if lat else None,
            "p90_ms": (percentile(lat, 90) or 0) * 1000 if lat else None,
            "p99_ms": (percentile(lat, 99) or 0) * 1000 if lat else None,
            "max_ms": max(lat) * 1000 if lat else None,
            "worker_cpu_utilization": {k: v / offered_s for k, v in cpu.items()},
            "series_ms": [round(x * 1000, 1) for x in lat]}


# --------------------------------------------------------------------------- profile


#: Where a sample's time goes, by the first marker found in its stack (checked in this order).
PROFILE_BUCKETS = (
    ("ingest agent (normalize, re-key, send)", ("Ingest.process", "Pipeline._ingest_fn.<locals>.ingest")),
    ("lifecycle agent (table, fold, funnel share)", ("Lifecycle.process", "Pipeline._lifecycle")),
    ("timers (deadlines tick, funnel-windows publish)", ("Timers.tick", "Timers.publish_windows", "Pipeline._tick", "Pipeline._publish_windows")),
    ("web views", ("aiohttp/web_protocol.py", "faust/web/")),
    ("aiokafka consumer thread (fetch, decode)", ("AIOKafkaConsumerThread", "mode/threads.py")),
    ("faust fetcher / message dispatch", ("Fetcher._fetcher", "Consumer._drain_messages", "Conductor")),
    ("producer (send, batches, acks)", ("aiokafka/producer/", "faust/transport/producer.py")),
    ("offset commit", ("Consumer.commit", "Consumer._commit", "Consumer.force_commit")),
    ("faust stream plumbing (Stream iteration, events, acks, sensors)",
     ("faust/streams.py", "faust/sensors/", "faust/events.py", "App.create_event", "faust/agents/")),
)

#: Functions whose inclusive share is worth knowing (substring of the frame text).
PROFILE_SELECTED = (
    "normalize (streams/normalize.py", "Pipeline._on_event", "apply (streams/lifecycle.py", "summarize (streams/",
    "MessageState.to_bytes", "MessageState.from_bytes", "FunnelShare.apply", "Pipeline._schedule",
    "Metrics.event", "Topic.send", "Producer.send", "AIOKafkaProducer.send", "Table.__setitem__",
    "Collection.__getitem__", "Table.get", "loads", "dumps", "murmur2", "Consumer._to_message",
    "Stream._c_aiter", "Agent._execute_actor",
)


def summarize_pyspy_raw(path: Path, top: int = 15) -> dict[str, Any]:
    """Shares of samples from py-spy's collapsed-stack ("raw") output: self time by package of
    the leaf frame, time by pipeline stage (PROFILE_BUCKETS) and inclusive time of selected
    functions. py-spy records on-CPU samples only (no --idle), of every thread."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkgs: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    selected: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        total += n
        frames = stack.split(";")
        names = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f for f in frames]
        self_c[names[-1]] += n
        for nm in set(names):
            incl[nm] += n
        where = frames[-1].rpartition(" (")[2]
        pkg = where.split("/", 1)[0] if "/" in where else where.rsplit(":", 1)[0]
        pkgs[pkg] += n
        for label, markers in PROFILE_BUCKETS:
            if any(m in f for f in frames for m in markers):
                buckets[label] += n
                break
        else:
            buckets["event loop (asyncio scheduling, select) and other"] += n
        for sel in PROFILE_SELECTED:
            if any(sel in f for f in frames):
                selected[sel] += n
    pct = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0)
    generic = ("asyncio/", "click/", "threading.py", "mode/worker.py", "faust/cli/", "<module>", "agents/cli.py",
               "agents/worker.py", "App.main", "mode/services.py", "Agent._execute_actor", "mode/threads.py")
    return {"samples": total,
            "by_stage": [(k, pct(v)) for k, v in buckets.most_common()],
            "self_by_package": [(k, pct(v)) for k, v in pkgs.most_common(12)],
            "self_top": [(k, pct(v)) for k, v in self_c.most_common(top)],
            "inclusive_top": [(k, pct(v)) for k, v in incl.most_common()
                              if not any(g in k for g in generic)][:top],
            "inclusive_selected": [(k, pct(v)) for k, v in selected.most_common()]}


async def profile_run(ctx: "Ctx", seconds: float, timeout_s: float) -> dict[str, Any]:
    pyspy = Path(sys.executable).parent / "py-spy"
    if not pyspy.exists() and shutil.which("py-spy") is None:
        return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
    pyspy_bin = str(pyspy) if pyspy.exists() else shutil.which("py-spy")
    run = WorkerRun("prof", 1, ctx)
    ctx.extra_groups.append(run.app_id)
    out = ctx.out_dir / f"profile-{ctx.stamp}.txt"
    procs: list[subprocess.Popen] = []

    def on_assigned(w: Any) -> None:
        procs.append(subprocess.Popen([pyspy_bin, "record", "-p", str(w.pid), "-d", str(int(seconds)), "-r", "100",
                                       "--nonblocking", "-f", "raw", "-o", str(out)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        async with Kafka(ctx.bootstrap) as kafka:
            res = await catch_up(run, kafka, timeout_s, 1.0, on_assigned=on_assigned,
                                 stop_after_s=seconds + 5)
    finally:
        for p in procs:
            try:
                p.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                p.kill()
        run.stop()
    if not out.exists():
        err = procs[0].stderr.read().decode(errors="replace")[-500:] if procs else "py-spy not started"
        return {"error": err}
    summary = summarize_pyspy_raw(out)
    summary["file"] = str(out.relative_to(ROOT))
    part = res.get("partial") or {}
    summary["events_per_s_under_profiler"] = res.get("events_per_s") or part.get("events_per_s")
    return summary


# --------------------------------------------------------------------------- main


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.bootstrap = args.bootstrap
        self.stamp = time.strftime("%Y%m%dT%H%M%S")
        self.prefix = f"fwbench-{self.stamp.lower()}-{secrets.token_hex(2)}"
        self.t_as = f"{self.prefix}-activity-sync"
        self.t_ac = f"{self.prefix}-altcraft"
        self.tmp = Path(tempfile.mkdtemp(prefix="fwbench-"))
        self.out_dir = ROOT / ".bench"
        self.out_dir.mkdir(exist_ok=True)
        self.input_ends: dict[Any, int] = {}
        self.extra_groups: list[str] = []
        self.log_level = args.log_level
        self.code_env: dict[str, str] = {}  # PYTHONPATH of a `--rev` export for workers and replay
        if args.rev:
            self.code_env = self.export(args.rev, "code")
        self.compare_env = self.export(args.compare, "compare") if args.compare else {}

    def export(self, rev: str, name: str) -> dict[str, str]:
        """agents/ + streams/ of ``rev`` in a temp dir: the PYTHONPATH that runs them. A
        directory holding ``agents/`` and ``streams/`` (e.g. a copy of the working tree with one
        change undone) is used as it is."""
        if (Path(rev) / "agents").is_dir() and (Path(rev) / "streams").is_dir():
            return {"PYTHONPATH": str(Path(rev).resolve())}
        code = self.tmp / name
        code.mkdir()
        archive = subprocess.run(["git", "archive", rev, "agents", "streams"], cwd=ROOT,
                                 capture_output=True, check=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True, timeout=60)
        return {"PYTHONPATH": str(code)}


def fmt(x: float | None, nd: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=500_000, help="at least this many input records (default 500000)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--bootstrap", default=os.environ.get("FUNNELWATCH_BENCH_BOOTSTRAP", "127.0.0.1:19092"))
    p.add_argument("--phase-timeout", type=float, default=900.0, help="hard limit per phase, seconds (900)")
    p.add_argument("--poll-s", type=float, default=0.5, help="group-offset poll interval during catch-up (0.5)")
    p.add_argument("--raw-repeat", type=int, default=2, help="runs of the (a) ceiling; the best counts (2)")
    p.add_argument("--latency-s", type=float, default=20.0)
    p.add_argument("--latency-fractions", default="0.1,0.5",
                   help="offered rates as fractions of the (b) events/s, comma-separated (0.1,0.5)")
    p.add_argument("--latency-warmup-s", type=float, default=5.0, help="load without probes first (5)")
    p.add_argument("--latency-rate", default=None,
                   help="offered events/s, comma-separated (instead of fractions of the (b) rate)")
    p.add_argument("--probe-interval-s", type=float, default=0.05)
    p.add_argument("--funnel-poll-s", type=float, default=0.05)
    p.add_argument("--skip-two", action="store_true", help="skip (c), the two-worker run")
    p.add_argument("--phases", default="abcfgqr",
                   help="which phases to run (default all, abcfgqr): a raw aiokafka, b one worker (memory), "
                        "c two workers, f minimal faust agent floor, g the same floor with the worker's "
                        "consumer class, q Quix Streams reference app (bench/quix_app.py), "
                        "r one worker with rocksdict")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--profile", action="store_true", help="extra one-worker run sampled by py-spy (not timed)")
    p.add_argument("--profile-s", type=float, default=60.0, help="py-spy sampling time (60)")
    p.add_argument("--log-level", default="WARNING", help="FUNNELWATCH_LOG_LEVEL of the workers (WARNING)")
    p.add_argument("--rev", default=None,
                   help="run workers, replay and the floor apps on agents/ + streams/ of this git revision (git "
                        "archive into a temp dir, PYTHONPATH; or of this directory, when it holds agents/ and "
                        "streams/) instead of the working tree")
    p.add_argument("--compare", default=None, metavar="REV",
                   help="also run (b) on agents/ + streams/ of this git revision (or of this directory, "
                        "when it holds agents/ and streams/), same input, same run, and print both "
                        "(e.g. the commit before a change)")
    p.add_argument("--keep-topics", action="store_true")
    p.add_argument("--raw-consume-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--topics", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=900.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.raw_consume_child:
        return raw_consume_child(args)

    ensure_broker(args.bootstrap)
    ctx = Ctx(args)
    result: dict[str, Any] = {
        "bench": "pipeline", "timestamp": ctx.stamp, "prefix": ctx.prefix, "bootstrap": ctx.bootstrap,
        "host": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(), "python": platform.python_version(),
                 "platform": platform.platform()},
        "git": {**git_info(), "rev": args.rev, "compare": args.compare, "rev_sha": subprocess.run(
            ["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True, text=True).stdout.strip()
            if args.rev else None}, "args": {k: v for k, v in vars(args).items() if k not in ("raw_consume_child", "topics",
                                                                                      "timeout")},
    }
    out_path = ctx.out_dir / f"pipeline-{ctx.stamp}.json"
    runs: list[WorkerRun] = []
    apps: list[AppRun] = []
    replay_proc = None
    try:
        # ---------------------------------------------------------------- data
        now_us = time.time_ns() // 1000
        t = time.perf_counter()
        records = generate_records(args.events, args.seed, now_us)
        n_ac = sum(1 for r in records if b'"event_type"' in r)
        result["data"] = {"records": len(records), "activity_sync": len(records) - n_ac, "altcraft": n_ac,
                          "bytes": sum(map(len, records)), "generate_s": time.perf_counter() - t, "seed": args.seed}
        log(f"generated {len(records):,} records ({n_ac:,} altcraft) in {result['data']['generate_s']:.1f}s")
        jsonl = ctx.tmp / "records.jsonl"
        with open(jsonl, "wb") as fh:
            for r in records:
                fh.write(r + b"\n")
        replay_out = open(ctx.tmp / "replay.json", "wb")
        t_replay = time.perf_counter()
        replay_proc = subprocess.Popen([str(Path(sys.executable).parent / "funnelwatch"), "replay", "--json",
                                        str(jsonl)], stdout=replay_out, stderr=subprocess.PIPE, cwd=ctx.tmp,
                                       env={**os.environ, **ctx.code_env})

        async def setup() -> tuple[float, dict[Any, int]]:
            async with Kafka(ctx.bootstrap) as kafka:
                await kafka.create_topics([ctx.t_as, ctx.t_ac], INPUT_PARTITIONS)
                dt = await produce_all(ctx.bootstrap, records, ctx.t_as, ctx.t_ac)
                return dt, await kafka.end_offsets([ctx.t_as, ctx.t_ac])

        produce_s, ctx.input_ends = asyncio.run(setup())
        assert sum(ctx.input_ends.values()) == len(records), (sum(ctx.input_ends.values()), len(records))
        result["data"]["produce_s"] = produce_s
        result["data"]["per_partition"] = {f"{tp.topic.rsplit('-', 2)[-1]}/{tp.partition}": n
                                          for tp, n in sorted(ctx.input_ends.items())}
        log(f"produced to {ctx.t_as} / {ctx.t_ac} in {produce_s:.1f}s "
            f"({len(records) / produce_s:,.0f}/s)")
        del records

        rc = replay_proc.wait(timeout=args.phase_timeout)
        replay_out.close()
        if rc != 0:
            raise RuntimeError(f"replay failed: {replay_proc.stderr.read().decode()[-2000:]}")
        result["replay_s"] = time.perf_counter() - t_replay
        expected = orjson.loads((ctx.tmp / "replay.json").read_bytes())["windows"]
        log(f"replay --json done ({len(expected)} window rows)")

        # ---------------------------------------------------------------- (a)
        raws = []
        for i in range(max(1, args.raw_repeat) if "a" in args.phases else 0):
            raws.append(run_raw(ctx.bootstrap, [ctx.t_as, ctx.t_ac], args.phase_timeout))
            log(f"(a) raw consume + orjson.loads: {raws[-1]['events_per_s']:,.0f} events/s "
                f"({raws[-1]['seconds']:.2f}s, cpu {raws[-1]['cpu_s']:.2f}s)")
        if raws:
            result["a_raw"] = max(raws, key=lambda r: r["events_per_s"])
            result["a_raw"]["runs_events_per_s"] = [r["events_per_s"] for r in raws]

        # ---------------------------------------------------------------- (b)
        def phase(key: str, fn: Any) -> Any:
            """Run one phase; an exception is recorded under ``<key>_error`` and the run goes on."""
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001
                result[f"{key}_error"] = repr(exc)
                log(f"{key}: FAILED: {exc!r}\n{traceback.format_exc()}")
                return None

        async def catch_up_phase(run: WorkerRun) -> dict[str, Any]:
            async with Kafka(ctx.bootstrap) as kafka:
                return await catch_up(run, kafka, args.phase_timeout, args.poll_s)

        def after_catch_up(key: str, run: WorkerRun, res: dict[str, Any]) -> None:
            result[key] = res
            if "events_per_s" not in res:
                part = res.get("partial") or {}
                log(f"{key}: no lag-0 result ({'timeout' if res.get('timeout') else 'crashed'}; "
                    f"partial {fmt(part.get('events_per_s'))} events/s)")
                return
            log(f"{key}: {res['events_per_s']:,.0f} events/s ({res['seconds']:.1f}s)")
            corr = key[0] + "_correctness" + ("_compare" if key.endswith("_compare") else "")
            result[corr] = asyncio.run(check_funnel(run, expected))
            log(f"{key}: /funnel vs replay: {'OK' if result[corr]['ok'] else 'MISMATCH'}")

        def worker_phase(key: str, label: str, n: int, store: str = "memory://") -> None:
            run = WorkerRun(label, n, ctx, store=store)
            runs.append(run)
            log(f"{key}: {n} worker(s) catching up ...")
            try:
                res = asyncio.run(catch_up_phase(run))
                after_catch_up(key, run, res)
            finally:
                run.stop()

        def app_phase(key: str, label: str, argv: list[str], group: str, internal_prefix: str | None = None,
                      changelog_prefix: str | None = None) -> None:
            run = AppRun(label, ctx, argv, group, internal_prefix, changelog_prefix)
            apps.append(run)
            ctx.extra_groups.append(group)
            log(f"{key}: {label} catching up ...")
            try:
                async def go() -> dict[str, Any]:
                    async with Kafka(ctx.bootstrap) as kafka:
                        return await app_catch_up(run, kafka, args.phase_timeout, args.poll_s)
                res = asyncio.run(go())
            finally:
                run.stop()
            result[key] = res
            if "events_per_s" in res:
                log(f"{key}: {res['events_per_s']:,.0f} events/s ({res['seconds']:.1f}s, "
                    f"{fmt(res.get('cpu_us_per_event'), 1)} µs CPU/event"
                    + (f"; {res['changelog_records']:,} changelog records" if "changelog_records" in res else "")
                    + ")")
            else:
                part = res.get("partial") or {}
                log(f"{key}: no lag-0 result ({'timeout' if res.get('timeout') else 'crashed'}; "
                    f"partial {fmt(part.get('events_per_s'))} events/s)")

        def floor_phase(key: str, label: str, consumer: str) -> None:
            from tests.worker_harness import free_port

            app_phase(key, label, [sys.executable, str(ROOT / "bench" / "faust_floor.py"), "--bootstrap",
                                   ctx.bootstrap, "--topics", f"{ctx.t_as},{ctx.t_ac}", "--app-id",
                                   f"{ctx.prefix}-{label}", "--data-dir", str(ctx.tmp / label / "data"),
                                   "--partitions", str(INPUT_PARTITIONS), "--web-port", str(free_port()),
                                   "--consumer", consumer], f"{ctx.prefix}-{label}")

        # ---------------------------------------------------------------- (f), (g): faust floor
        if "f" in args.phases:
            phase("f_faust_floor", lambda: floor_phase("f_faust_floor", "floor", "faust"))
        if "g" in args.phases:
            phase("g_faust_floor_our_consumer",
                  lambda: floor_phase("g_faust_floor_our_consumer", "floor-fw", "funnelwatch"))

        # ---------------------------------------------------------------- (b)
        if "b" in args.phases:
            phase("b_one_worker", lambda: worker_phase("b_one_worker", "1w", 1))
        # ---------------------------------------------------------------- (r): (b) with rocksdict
        if "r" in args.phases:
            phase("r_one_worker_rocksdict",
                  lambda: worker_phase("r_one_worker_rocksdict", "1w-rocksdict", 1, store="rocksdict://"))
        if args.compare:  # (b) again, same input, on the code of --compare
            own_env, ctx.code_env = ctx.code_env, ctx.compare_env
            try:
                phase("b_compare", lambda: worker_phase("b_compare", "1w-compare", 1))
            finally:
                ctx.code_env = own_env

        # ---------------------------------------------------------------- profile
        if args.profile:
            log(f"profile: one worker under py-spy for {args.profile_s:.0f}s ...")
            result["profile"] = phase("profile", lambda: asyncio.run(
                profile_run(ctx, args.profile_s, args.phase_timeout)))

        # ---------------------------------------------------------------- (c)
        if not args.skip_two and "c" in args.phases:
            phase("c_two_workers", lambda: worker_phase("c_two_workers", "2w", 2))

        # ---------------------------------------------------------------- (q): Quix Streams
        if "q" in args.phases:
            def quix_phase() -> None:
                import importlib.util

                if importlib.util.find_spec("quixstreams") is None:
                    raise RuntimeError("quixstreams not installed: .venv/bin/pip install -e '.[bench]' "
                                       "(make bench does)")
                group = f"{ctx.prefix}-quix"
                app_phase("q_quix", "quix", [sys.executable, str(ROOT / "bench" / "quix_app.py"), "--bootstrap",
                                             ctx.bootstrap, "--topics", f"{ctx.t_as},{ctx.t_ac}", "--group", group,
                                             "--state-dir", str(ctx.tmp / "quix" / "state")],
                          group, internal_prefix=f"repartition__{group}", changelog_prefix=f"changelog__{group}")
            phase("q_quix", quix_phase)

        # ---------------------------------------------------------------- latency
        b_rate = (result.get("b_one_worker") or {}).get("events_per_s")
        fractions = sorted(float(x) for x in args.latency_fractions.split(",") if x.strip())
        if not args.skip_latency and (b_rate or args.latency_rate):
            def latency_phase() -> dict[str, Any]:
                rates = (sorted(float(x) for x in args.latency_rate.split(",")) if args.latency_rate
                         else [f * b_rate for f in fractions])
                inputs = (f"{ctx.prefix}-lat-activity-sync", f"{ctx.prefix}-lat-altcraft")
                run = WorkerRun("lat", 1, ctx, inputs=inputs)
                runs.append(run)
                out: dict[str, Any] = {"note": "one fresh worker on its own (initially empty) input topics; "
                                               "steps in ascending rate order, each with a warm-up",
                                       "steps": []}
                try:
                    async def go() -> None:
                        async with Kafka(ctx.bootstrap) as kafka:
                            await kafka.create_topics(list(inputs) + run.output_topics(), INPUT_PARTITIONS)
                        await wait_serving(run, args.phase_timeout)
                        for i, rate in enumerate(rates):
                            log(f"latency: offering {rate:,.0f} events/s for {args.latency_warmup_s:.0f}s warm-up + "
                                f"{args.latency_s:.0f}s ...")
                            st = await latency_probe(run, rate, args.latency_s, args.probe_interval_s,
                                                     args.funnel_poll_s, args.seed + 1000 + i,
                                                     args.latency_warmup_s, f"s{i}")
                            st["fraction_of_b"] = rate / b_rate if b_rate else None
                            out["steps"].append(st)
                            log(f"latency at {st['offered_rate']:,.0f}/s: p50 {fmt(st['p50_ms'])} ms, "
                                f"p99 {fmt(st['p99_ms'])} ms")
                    asyncio.run(go())
                    out["peak_rss_mb"] = {w.name: (proc_status_kb(w.pid, "VmHWM") or 0) / 1024 for w in run.workers}
                    return out
                finally:
                    run.stop()
            result["latency"] = phase("latency", latency_phase)
    except BaseException as exc:
        result["error"] = repr(exc)
        raise
    finally:
        for r in [*runs, *apps]:
            r.stop()
        if replay_proc is not None and replay_proc.poll() is None:
            replay_proc.kill()
        a = result.get("a_raw", {}).get("events_per_s")
        b = result.get("b_one_worker", {}).get("events_per_s")
        c = result.get("c_two_workers", {}).get("events_per_s")
        result["ratios"] = {"b_over_a": b / a if a and b else None, "c_over_b": c / b if b and c else None}
        rates = {k[0]: result.get(k, {}).get("events_per_s") for k in
                 ("f_faust_floor", "g_faust_floor_our_consumer", "r_one_worker_rocksdict", "q_quix")}
        rates.update(a=a, b=b, c=c)
        for num, den in (("b", "q"), ("r", "q"), ("b", "f"), ("r", "f"), ("g", "f"), ("f", "a"), ("q", "a"),
                         ("q", "f"), ("r", "b")):
            if rates.get(num) and rates.get(den):
                result["ratios"][f"{num}_over_{den}"] = rates[num] / rates[den]
        if not args.keep_topics:
            async def cleanup() -> list[str]:
                async with Kafka(ctx.bootstrap) as kafka:
                    return await kafka.delete_matching(ctx.prefix, [r.app_id for r in runs] + ctx.extra_groups)
            for attempt in range(4):  # the broker may be restarting (someone else's test): retry a while
                try:
                    result["deleted_topics"] = asyncio.run(cleanup())
                    break
                except Exception as exc:  # noqa: BLE001
                    log(f"cleanup failed ({exc!r}){'; retrying' if attempt < 3 else ''}")
                    if attempt < 3:
                        time.sleep(10)
            else:
                result["cleanup_error"] = f"topics containing {ctx.prefix!r} may be left on the broker"
        shutil.rmtree(ctx.tmp, ignore_errors=True)
        out_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
                                          default=str))
        print_summary(result, out_path)
    if not all(result.get(k, {}).get("ok", True) for k in ("b_correctness", "b_correctness_compare",
                                                           "r_correctness", "c_correctness")):
        return 1  # MISMATCH
    failed = [k for k in result if k.endswith("_error")] + [
        k for k in ("b_one_worker", "c_two_workers", "r_one_worker_rocksdict", "f_faust_floor",
                    "g_faust_floor_our_consumer", "q_quix") if k in result and "events_per_s" not in result[k]]
    return 2 if failed else 0


def print_summary(r: dict[str, Any], out_path: Path) -> None:
    d = r.get("data", {})
    a, b, c = r.get("a_raw", {}), r.get("b_one_worker", {}), r.get("c_two_workers", {})
    code = (f"code of {r['git']['rev']}" + (f" ({r['git']['rev_sha']})" if r["git"].get("rev_sha") else "")
            if r["git"].get("rev") else
            f"working tree at {r['git']['head']}{' + uncommitted agents/streams' if r['git']['dirty_agents_streams'] else ''}")
    lines = ["", f"funnelwatch pipeline bench  ({r['host']['cpus']} CPUs; workers run the {code})",
             f"  input: {d.get('records', 0):,} records on 2 topics x {INPUT_PARTITIONS} partitions "
             f"({d.get('bytes', 0) / 1e6:,.0f} MB)"]
    if a:
        lines.append(f"  (a) raw aiokafka + orjson.loads   {fmt(a.get('events_per_s'))} events/s   "
                     f"cpu {fmt(a.get('cpu_s'), 1)} s   peak RSS {fmt(a.get('peak_rss_mb'))} MB")
    bc = r.get("b_compare", {})
    compare = r["git"].get("compare")
    for label, x in (("(f) minimal faust agent floor   ", r.get("f_faust_floor", {})),
                     ("(g) floor, our consumer class   ", r.get("g_faust_floor_our_consumer", {})),
                     ("(b) one worker                  ", b),
                     (f"(b) one worker, code of {compare}".ljust(32), bc),
                     ("(r) one worker, rocksdict       ", r.get("r_one_worker_rocksdict", {})),
                     ("(c) two workers                 ", c),
                     ("(q) Quix Streams reference app  ", r.get("q_quix", {}))):
        if not x:
            continue
        if "events_per_s" not in x:
            part = x.get("partial") or {}
            why = "timeout" if x.get("timeout") else "worker exited" if x.get("crashed") else "no result"
            lines.append(f"  {label} {why}: {part.get('events_done', 0):,} events in {fmt(part.get('seconds'), 0)} s"
                         f" = {fmt(part.get('events_per_s'))} events/s (partial)")
            continue
        cpu = " + ".join(fmt(v, 1) for v in x["cpu_s"].values())
        rss = " / ".join(fmt(v) for v in x["peak_rss_mb"].values())
        lines.append(f"  {label} {fmt(x['events_per_s'])} events/s   ({fmt(x['seconds'], 1)} s from first "
                     f"assignment to group lag 0; {fmt(x.get('events_per_s_from_spawn'))}/s from spawn)")
        lines.append(f"      input topics done after {fmt(x.get('input_done_after_s'), 1)} s (ingest stage "
                     f"{fmt(x.get('ingest_events_per_s'))}/s), lifecycle (Quix: repartition) topics drained "
                     f"{fmt(x['seconds'] - x.get('input_done_after_s', x['seconds']), 1)} s later")
        lines.append(f"      worker CPU {cpu} s ({fmt(x.get('cpu_us_per_event'), 1)} µs/event)   "
                     f"peak RSS {rss} MB   broker CPU {fmt(x.get('broker_cpu_s'), 1)} s   "
                     f"other processes {fmt(x.get('other_processes_cpu_s'), 1)} s")
    ra = r.get("ratios", {})
    lines.append(f"  ratios: b/a = {fmt(ra.get('b_over_a'), 3)}   c/b = {fmt(ra.get('c_over_b'), 2)}")
    if any(k in ra for k in ("b_over_q", "r_over_q", "b_over_f", "r_over_f", "g_over_f")):
        lines.append(f"  worker/Quix: b/q = {fmt(ra.get('b_over_q'), 2)}   r/q = {fmt(ra.get('r_over_q'), 2)}   "
                     f"worker/faust floor: b/f = {fmt(ra.get('b_over_f'), 2)}   r/f = {fmt(ra.get('r_over_f'), 2)}   "
                     f"g/f = {fmt(ra.get('g_over_f'), 2)}   q/f = {fmt(ra.get('q_over_f'), 2)}")
    if b.get("cpu_us_per_event") and bc.get("cpu_us_per_event"):
        lines.append(f"  (b) vs {compare}: {b['events_per_s'] / bc['events_per_s']:.2f}x events/s, "
                     f"{b['cpu_us_per_event'] / bc['cpu_us_per_event']:.2f}x CPU per event")
    for label, key in (("(b)", "b_correctness"), ("(b) " + str(compare), "b_correctness_compare"),
                       ("(r)", "r_correctness"), ("(c)", "c_correctness")):
        if key in r:
            k = r[key]
            ing = [int(m.get("ingested_records", 0)) for m in k["metrics"].values()]
            lines.append(f"  {label} /funnel windows vs replay --json: {'OK' if k['ok'] else 'MISMATCH'} "
                         f"({k['rows']} rows; records ingested per /metrics: {' + '.join(map(str, ing))})")
            if not k["ok"]:
                lines.append(f"      {k.get('diff_rows')} rows differ; entered total {k.get('entered_total')} vs "
                             f"{k.get('expected_entered_total')} (per-worker local shares: {k.get('entered_local_share')})")
    for st in (r.get("latency") or {}).get("steps", []):
        frac = f"{st['fraction_of_b']:.0%} of (b)" if st.get("fraction_of_b") else "fixed"
        lines.append(f"  latency at {fmt(st['offered_rate'])} events/s offered ({frac}; {st['probes_seen']}/"
                     f"{st['probes']} probes over {st['seconds'] - st['warmup_s']:.0f} s after {st['warmup_s']:.0f} s "
                     f"warm-up; worker CPU {' / '.join(f'{v:.0%}' for v in st['worker_cpu_utilization'].values())}): "
                     f"p50 {fmt(st['p50_ms'])} ms  p90 {fmt(st['p90_ms'])} ms  p99 {fmt(st['p99_ms'])} ms  "
                     f"max {fmt(st['max_ms'])} ms")
    prof = r.get("profile")
    if prof and "by_stage" in prof:
        lines.append(f"  profile (py-spy, {prof['samples']} on-CPU samples of the first {fmt(r['args']['profile_s'])} s"
                     f" of a separate one-worker catch-up; {prof['file']}):")
        lines.append("    by stage: " + "; ".join(f"{k} {v}%" for k, v in prof["by_stage"]))
        lines.append("    self by package: " + ", ".join(f"{k} {v}%" for k, v in prof["self_by_package"][:8]))
        lines.append("    inclusive: " + "; ".join(f"{k} {v}%" for k, v in prof["inclusive_selected"] if v >= 0.5))
    elif prof:
        lines.append(f"  profile: {prof.get('error')}")
    for k, v in r.items():
        if k.endswith("_error"):
            lines.append(f"  {k}: {v}")
    if r.get("error"):
        lines.append(f"  ERROR: {r['error']}")
    lines.append(f"  figures: {out_path.relative_to(ROOT)}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
