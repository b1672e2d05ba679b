"""Cost of one alert tick vs. the number of in-flight deadlines.

One tick of a deadline heap (a partition of the worker's ``PartitionedDeadlines``) does
``DeadlineIndex.pop_due(now)`` and, for every due deadline it cannot alert yet (lag /
recovery) or that is re-armed, ``DeadlineIndex.schedule`` again. This benchmark measures
exactly that domain work: per tick, 10 deadlines fall due, are popped, and are
rescheduled to a later deadline; the index otherwise holds N scheduled (not yet due)
in-flight deadlines, N = 1,000 and 1,000,000.

The index is a lazy-deletion min-heap, so the cost should be O(d log n) for d due entries:
a 1000x bigger index should cost roughly log(1e6)/log(1e3) = 2x, not 1000x.

Second part (``--gated``, on by default): the worker's whole tick (``agents.timers.Timers``
on a fake app and commit point) while every partition lags more than ``alert_max_lag``,
with 100,000 deadlines already held behind the gate vs with none. The held ones were set
aside once, when they fell due; a tick behind the gate does not look at them again.

Usage: ``.venv/bin/python bench/bench_deadlines.py [--runs 7] [--ticks 2000] [--due 10]``
Prints per-size median tick cost (µs; median over runs of the median tick in each run)
and the ratio large/small, then the gated tick with and without held deadlines.
"""
from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.stuck import DeadlineIndex  # noqa: E402

US = 1_000_000
STAGES = ("queued", "sent")


def build(n: int, seed: int) -> tuple[DeadlineIndex, int]:
    """An index of ``n`` deadlines ``t0 + i`` (1 µs apart), scheduled in random order.

    Keys look like real message keys. Returns the index and t0.
    """
    rng = random.Random(seed)
    t0 = 1_700_000_000 * US
    order = list(range(n))
    rng.shuffle(order)
    idx = DeadlineIndex()
    for i in order:
        idx.schedule(f"activity_sync|tenant-{i % 50}|msg-{i:08d}", t0 + i, STAGES[i & 1])
    assert len(idx) == n
    return idx, t0


class Clock:
    def __init__(self, t0: int) -> None:
        self.now = t0


def run_once(idx: DeadlineIndex, clock: Clock, n: int, due: int, ticks: int) -> float:
    """Median µs per tick over ``ticks`` ticks.

    Steady state: each tick advances ``now`` by ``due`` µs, so exactly ``due`` deadlines
    are due; each popped deadline ``d`` is rescheduled to ``d + n`` (the back of the
    queue), so the index keeps exactly ``n`` live deadlines, evenly spread, forever.
    """
    samples: list[int] = []
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for t in range(ticks):
            clock.now += due
            start = time.perf_counter_ns()
            popped = idx.pop_due(clock.now)
            for key, stage, d in popped:  # re-arm (as the worker does while lagging / recovering)
                idx.schedule(key, d + n, stage)
            samples.append(time.perf_counter_ns() - start)
            if len(popped) != due:
                raise AssertionError(f"tick {t}: expected {due} due deadlines, got {len(popped)}")
    finally:
        if gc_was:
            gc.enable()
    assert len(idx) == n
    return statistics.median(samples) / 1000.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="independent runs per size (median is reported)")
    ap.add_argument("--ticks", type=int, default=2000, help="ticks timed per run")
    ap.add_argument("--due", type=int, default=10, help="deadlines falling due per tick")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000], help="in-flight deadlines")
    ap.add_argument("--no-gated", dest="gated", action="store_false", help="skip the gated worker tick")
    args = ap.parse_args(argv)
    sizes = sorted(args.sizes)
    print(f"DeadlineIndex tick = pop_due({args.due} due) + reschedule them; "
          f"{args.runs} runs x {args.ticks} ticks per size (python {sys.version.split()[0]})")
    medians: dict[int, float] = {}
    for n in sizes:
        t_build = time.perf_counter()
        idx, t0 = build(n, seed=n)
        built = time.perf_counter() - t_build
        clock = Clock(t0)
        run_once(idx, clock, n, args.due, min(args.ticks, 200))  # warm-up
        runs = [run_once(idx, clock, n, args.due, args.ticks) for _ in range(args.runs)]
        medians[n] = statistics.median(runs)
        print(f"  in-flight {n:>10,}: median {medians[n]:7.2f} µs/tick  "
              f"(runs: {', '.join(f'{r:.2f}' for r in runs)}; min {min(runs):.2f}, max {max(runs):.2f}; "
              f"index built in {built:.1f} s)")
    lo, hi = sizes[0], sizes[-1]
    ratio = medians[hi] / medians[lo]
    print(f"ratio {hi:,} / {lo:,}: {ratio:.2f}x  (index size x{hi // lo:,}; "
          f"O(log n) would predict ~{_log_ratio(lo, hi):.1f}x)")
    if args.gated:
        ticks = min(args.ticks, 500)
        none = statistics.median(gated_tick_us(0, ticks) for _ in range(args.runs))
        held = statistics.median(gated_tick_us(100_000, ticks) for _ in range(args.runs))
        print(f"worker tick, every partition lagging: 100,000 held deadlines {held:.1f} µs/tick, "
              f"none {none:.1f} µs/tick (median of {args.runs} runs x {ticks} ticks)")
    return 0


def gated_tick_us(n_held: int, ticks: int) -> float:
    """Median µs of a worker tick with ``n_held`` deadlines held behind a lag gate."""
    import asyncio
    from types import SimpleNamespace

    from agents.alerts import AlertBook
    from agents.app import Partitioner
    from agents.timers import Timers
    from streams.stuck import PartitionedDeadlines, SlaTable

    class Topic(str):
        def get_topic_name(self) -> str:
            return str(self)

    class Commit:
        accepting = True

        async def unstall(self) -> None:
            return None

        def lag(self, tp: object) -> int:
            return 5000

        def lag_of_topics(self, names: object) -> int:
            return 0

    class Metrics:
        def alert_suppressed(self, n: int = 1) -> None:
            pass

    part = Partitioner(8)
    deadlines = PartitionedDeadlines(part)
    t0 = 1_700_000_000 * US
    for i in range(n_held):
        deadlines.schedule(f"activity_sync|tenant-{i % 50}|msg-{i:08d}", t0 + i, STAGES[i & 1])
    app = SimpleNamespace(producer=None, in_recovery=False)
    topics = SimpleNamespace(events=Topic("events"), inputs=(Topic("as"), Topic("ac")))
    timers = Timers(app, topics, Commit(), SimpleNamespace(deadlines=deadlines, expiry=DeadlineIndex()),
                    AlertBook(Metrics(), SlaTable()), None, part, alert_max_lag=1000,
                    clock=lambda: t0 + n_held + 1)

    async def run() -> list[int]:
        await timers.tick()  # they fall due: set aside once
        out = []
        for _ in range(ticks):
            start = time.perf_counter_ns()
            await timers.tick()
            out.append(time.perf_counter_ns() - start)
        return out

    samples = asyncio.run(run())
    assert deadlines.held_count() == n_held
    return statistics.median(samples) / 1000.0


def _log_ratio(lo: int, hi: int) -> float:
    import math

    return math.log2(hi) / math.log2(lo)


if __name__ == "__main__":
    sys.exit(main())
