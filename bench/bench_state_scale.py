#!/usr/bin/env python3
"""State at scale: time to ready and RSS against the number of retained messages (issue 13).

For each N of ``--sizes`` (default 100k and 1M; 5M with ``--sizes 100000,1000000,5000000``), on
the real local broker, with the rocksdict store:

1. **seed**: N message states written straight to a fresh app's ``<app>-messages-changelog``
   topic: the very bytes the lifecycle agent writes (``MessageState.to_bytes``), keyed and
   partitioned as it does (murmur2 of the message key). 90% are delivered (no deadline), 10%
   still at ``sent`` within their SLA (a pending deadline each); a third carry a campaign.
2. **first start**: one worker with an empty data dir restores the table from the changelog;
   time from spawn to ``/health/ready`` 200, its RSS, and ``/funnel`` == the funnel that
   ``streams`` computes from the seeded states (the replay of the same messages).
3. **restart, local state kept**: SIGTERM, start again on the same data dir; time to ready.
4. **rebalance**: a second worker (empty data dir) joins; the first keeps half its partitions.
   Time from the second's spawn until the first is ready again (it dropped out of ready during
   the rebalance), until the second is ready, and ``/funnel`` complete and equal again; both
   RSS, and how many messages each logged in its rebuild.

Prints a table and writes ``.bench/state-scale-<timestamp>.json``. Every wait is bounded
(``--timeout`` per phase); workers are stopped SIGTERM → SIGKILL; the run's topics are deleted.
``--rev REV`` runs the workers on ``agents/`` and ``streams/`` of a git revision instead (its
state format: the seeded messages then carry no campaign, which older revisions cannot read).

    .venv/bin/python bench/bench_state_scale.py [--sizes 100000,1000000] [--partitions 4] [--rev REV]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.app import Partitioner  # noqa: E402
from streams.events import message_key  # noqa: E402
from streams.kinds import AC_LIFECYCLE, AS_LIFECYCLE  # noqa: E402
from streams.lifecycle import MessageState, contribution_delta, summarize  # noqa: E402
from streams.report import window_rows  # noqa: E402
from streams.timeparse import US_PER_S  # noqa: E402

BOOTSTRAP = os.environ.get("FUNNELWATCH_BENCH_BOOTSTRAP", "127.0.0.1:19092")
WINDOW_US = 3600 * US_PER_S


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mb(pid: int | None) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        return None
    return None


def seeded_states(n: int, now_us: int, seed: int = 1, campaigns: bool = True):
    """``(key, state bytes, source, tenant, state)`` of n messages (deterministic)."""
    rnd = random.Random(seed)
    out_sms, sent, deliv = (AS_LIFECYCLE[k].code for k in ("outbound-sms", "message-sent", "message-delivered"))
    ac_send, ac_deliv = AC_LIFECYCLE["send"].code, AC_LIFECYCLE["deliv"].code
    span_us = 6 * 3600 * US_PER_S
    for i in range(n):
        t0 = now_us - 60 * US_PER_S - rnd.randrange(span_us)
        pending = rnd.random() < 0.1
        campaign = None
        if rnd.random() < 0.5:
            source, tenant = "activity_sync", f"tenant-{i % 7}"
            events = [(t0, out_sms), (t0 + US_PER_S, sent)] + ([] if pending else [(t0 + 3 * US_PER_S, deliv)])
            if i % 3 == 0 and campaigns:
                campaign = f"flow:f10a{i % 11:04x}-04e3-4698-a799-04c558b77147"
        else:
            source, tenant = "altcraft", str(20 + i % 5)
            events = [(t0, ac_send)] + ([] if pending else [(t0 + 2 * US_PER_S, ac_deliv)])
            if i % 3 == 0 and campaigns:
                campaign = f"altcraft:{1000 + i % 13}"
        if pending:  # within the SLA (sent -> delivered: 900 s sms, 3600 s email): a pending deadline
            events = [(now_us - 30 * US_PER_S + (ts - t0), c) for ts, c in events]
        st = MessageState(sorted(events), 0, now_us, campaign, events[0][0] if campaign else 0)
        key = message_key(source, tenant, f"m{i}")
        yield key, st.to_bytes(), source, tenant, st


async def seed(app_id: str, n: int, partitions: int, now_us: int, campaigns: bool) -> tuple[list[dict], float]:
    """Write the states to the changelog; returns the expected ``/funnel`` rows and seconds taken."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"{app_id}-messages-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    part = Partitioner(partitions)
    funnel: dict[tuple, list[int]] = {}
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=50, max_batch_size=512 * 1024,
                                compression_type=None, acks=1)
    await producer.start()
    t = time.monotonic()
    try:
        pending: list[Any] = []
        for i, (key, raw, source, tenant, st) in enumerate(seeded_states(n, now_us, campaigns=campaigns)):
            s = summarize(source, st.events, st.campaign)
            for k, vec in contribution_delta(tenant, WINDOW_US, None, s):
                acc = funnel.setdefault(k, [0] * len(vec))
                for j, x in enumerate(vec):
                    acc[j] += x
            pending.append(await producer.send(topic, raw, key=key.encode(), partition=part(key)))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
                if i and i % 500_000 < 20_000:
                    log(f"  seeded {i + 1:,} ...")
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return window_rows(funnel), time.monotonic() - t


class Run:
    def __init__(self, app_id: str, tmp: Path, partitions: int, store: str, code_env: dict[str, str]) -> None:
        from tests.worker_harness import funnelwatch_bin

        self.app_id, self.tmp, self.partitions, self.store = app_id, tmp, partitions, store
        self.code_env = code_env
        self.bin = funnelwatch_bin()
        self.topics = {"activity_sync": f"{app_id}-as", "altcraft": f"{app_id}-ac", "dead_letters": f"{app_id}-dlq",
                       "alerts": f"{app_id}-alerts", "funnel_windows": f"{app_id}-windows"}
        self.workers: list[Any] = []

    def worker(self, name: str) -> Any:
        from tests.worker_harness import Worker, free_port, worker_env

        env = worker_env(app_id=self.app_id, bootstrap=BOOTSTRAP, topics=self.topics, data_dir=self.tmp / name,
                         web_port=free_port(), publish_interval_s=30, topic_partitions=self.partitions,
                         extra={"FUNNELWATCH_STORE": self.store, "FUNNELWATCH_LOG_LEVEL": "info",
                                "FUNNELWATCH_WINDOW_RETENTION_S": str(30 * 86400), **self.code_env})
        w = Worker(f"{name}-{len(self.workers)}", env, self.tmp / f"{name}-{len(self.workers)}.log",
                   argv=[self.bin, "worker"])
        self.workers.append(w)
        return w

    def stop_all(self) -> None:
        for w in self.workers:
            try:
                w.stop(timeout_s=30)
            except Exception:  # noqa: BLE001
                pass


def ready(w: Any) -> bool:
    st, _ = w.get("/health/ready", timeout_s=5)
    return st == 200


def wait(pred: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> float:
    t = time.monotonic()
    while time.monotonic() - t < timeout_s:
        try:
            if pred():
                return time.monotonic() - t
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")


def funnel_ok(w: Any, expected: list[dict]) -> bool:
    st, body = w.get_json("/funnel", timeout_s=60)
    return st == 200 and body.get("windows") == expected


def rebuilt(w: Any) -> list[int]:
    return [int(m) for m in re.findall(r"rebuilt derived state from (\d+) owned messages", w.log_text())]


def rebuild_rates(w: Any) -> list[tuple[int, float, float | None]]:
    """``(messages, seconds, messages/s)`` of each rebuild the worker logged (with its time)."""
    return [(int(n), float(t), int(n) / float(t) if float(t) > 0 else None)
            for n, t in re.findall(r"rebuilt derived state from (\d+) owned messages in ([\d.]+)s", w.log_text())]


def measure(n: int, args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    app_id = f"fwscale-{stamp}-{n}"
    tmp = Path(tempfile.mkdtemp(prefix="fwscale-"))
    code_env: dict[str, str] = {}
    if args.rev:
        code = tmp / "code"
        code.mkdir()
        archive = subprocess.run(["git", "archive", args.rev, "agents", "streams"], cwd=ROOT, capture_output=True,
                                 check=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True, timeout=60)
        code_env = {"PYTHONPATH": str(code)}
    run = Run(app_id, tmp, args.partitions, args.store, code_env)
    res: dict[str, Any] = {"messages": n, "store": args.store, "partitions": args.partitions, "rev": args.rev}
    now_us = time.time_ns() // 1000
    try:
        async def mk_inputs() -> None:
            from aiokafka.admin import AIOKafkaAdminClient, NewTopic
            admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(t, args.partitions, 1) for t in run.topics.values()])
            finally:
                await admin.close()
        asyncio.run(mk_inputs())
        log(f"N={n:,}: seeding the changelog ...")
        expected, res["seed_s"] = asyncio.run(seed(app_id, n, args.partitions, now_us, campaigns=not args.rev))
        res["seed_per_s"] = n / res["seed_s"]

        def start(phase: str) -> Any:
            """Worker "a" started; its time to ready, RSS, funnel check and rebuilds under ``phase``."""
            w = run.worker("a").start()
            res[f"{phase}_ready_s"] = wait(lambda: ready(w), args.timeout, f"{phase} ready")
            res[f"{phase}_rss_mb"] = rss_mb(w.pid)
            res[f"{phase}_funnel_ok"] = funnel_ok(w, expected)
            res[f"{phase}_rebuilt"] = rebuilt(w)
            res[f"{phase}_rebuild"] = rebuild_rates(w)
            return w

        log("first start (restores from the changelog) ...")
        w0 = start("first_start")
        log("restart with the local state kept ...")
        w0.stop(timeout_s=60)
        w0 = start("restart")

        log("rebalance: a second worker joins ...")
        before = len(rebuilt(w0))
        w1 = run.worker("b").start()
        t = time.monotonic()
        wait(lambda: len(rebuilt(w0)) > before, args.timeout, "the first worker's rebalance")
        wait(lambda: ready(w0), args.timeout, "kept worker ready again")
        res["rebalance_kept_ready_s"] = time.monotonic() - t
        wait(lambda: ready(w1), args.timeout, "joining worker ready")
        res["rebalance_joined_ready_s"] = time.monotonic() - t
        wait(lambda: funnel_ok(w0, expected) and funnel_ok(w1, expected), args.timeout, "funnel complete again", 1.0)
        res["rebalance_funnel_ok_s"] = time.monotonic() - t
        res["rebalance_funnel_ok"] = True
        res["rebalance_rss_mb"] = {"kept": rss_mb(w0.pid), "joined": rss_mb(w1.pid)}
        res["rebalance_rebuilt"] = {"kept": rebuilt(w0)[before:], "joined": rebuilt(w1)}
        res["rebalance_rebuild"] = {"kept": rebuild_rates(w0), "joined": rebuild_rates(w1)}
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        res["error"] = repr(exc)
        log(f"N={n:,}: {exc!r}")
        for w in run.workers:
            log(f"--- {w.name}\n{w.log_tail(15)}")
    finally:
        run.stop_all()
        from tests.worker_harness import delete_app_topics
        delete_app_topics(BOOTSTRAP, app_id)
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def fmt(x: Any, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}" if isinstance(x, float) else str(x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--store", default="rocksdict://")
    p.add_argument("--timeout", type=float, default=900.0, help="per wait, seconds")
    p.add_argument("--rev", default=None, help="run the workers on this git revision's code")
    args = p.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    results = [measure(int(n), args, stamp) for n in args.sizes.split(",") if n.strip()]
    out = ROOT / ".bench" / f"state-scale-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"stamp": stamp, "args": vars(args), "results": results}, indent=2, default=str))
    print(f"\nstate at scale ({args.store}, {args.partitions} partitions, code of {args.rev or 'the working tree'}; "
          "seconds to /health/ready 200)")
    print(f"{'messages':>10} {'first start':>12} {'restart':>9} {'rebal kept':>11} {'rebal joined':>13} "
          f"{'RSS MB start/restart/kept/joined':>34} {'funnel==replay':>15}")
    for r in results:
        rss = r.get("rebalance_rss_mb") or {}
        ok = all(r.get(k) for k in ("first_start_funnel_ok", "restart_funnel_ok", "rebalance_funnel_ok"))
        print(f"{r['messages']:>10,} {fmt(r.get('first_start_ready_s')):>12} {fmt(r.get('restart_ready_s')):>9} "
              f"{fmt(r.get('rebalance_kept_ready_s')):>11} {fmt(r.get('rebalance_joined_ready_s')):>13} "
              f"{' / '.join(fmt(x, 0) for x in (r.get('first_start_rss_mb'), r.get('restart_rss_mb'), rss.get('kept'), rss.get('joined'))):>34} "
              f"{('yes' if ok else 'NO'):>15}" + (f"  error: {r['error']}" if r.get("error") else ""))
    print(f"(rebuilt messages logged: {[ (r['messages'], r.get('rebalance_rebuilt')) for r in results ]})")
    for r in results:
        rates = [x for x in (r.get("restart_rebuild") or []) + (r.get("rebalance_rebuild") or {}).get("joined", [])
                 if x[0] > 0 and x[2]]
        if rates:
            print(f"{r['messages']:>10,}: rebuild scans of newly owned partitions: " +
                  ", ".join(f"{n:,} in {t:.2f}s ({v:,.0f}/s)" for n, t, v in rates))
    print(f"saved {out}")
    return 0 if all(not r.get("error") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
