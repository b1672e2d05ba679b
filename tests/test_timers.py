"""The deadline tick (agents/timers.py) with the lag gate, on fakes of the app and the commit
point (no broker): a gated partition's due deadlines are set aside once, counted once, left
alone by later ticks, and checked exactly once when the gate opens (issue: the tick re-popped
every suppressed deadline every second while a partition lagged)."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from agents.alerts import AlertBook
from agents.app import Partitioner
from agents.timers import Timers
from streams.events import message_key
from streams.stuck import PartitionedDeadlines, SlaTable

N_PARTS = 4
T0 = 1_700_000_000_000_000


class Topic:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, int]] = []

    async def send(self, topic: str, key: bytes, value: bytes, partition: int, *_: Any) -> None:
        self.sent.append((key, value, partition))


class Commit:
    accepting = True

    def __init__(self) -> None:
        self.lags = {p: 0 for p in range(N_PARTS)}
        self.input_lag = 0

    async def unstall(self) -> None:
        return None

    def lag(self, tp: Any) -> int:
        return self.lags[tp.partition]

    def lag_of_topics(self, names: Any) -> int:
        return self.input_lag


class Counting:
    def __init__(self) -> None:
        self.suppressed = 0

    def alert_suppressed(self, n: int = 1) -> None:
        self.suppressed += n


def make(n_due: int, lag: int) -> tuple[Timers, Commit, Producer, Counting, list[str]]:
    part = Partitioner(N_PARTS)
    deadlines = PartitionedDeadlines(part)
    keys = [message_key("activity_sync", "acme", f"m{i:06d}") for i in range(n_due)]
    for i, k in enumerate(keys):
        deadlines.schedule(k, T0 + i, "queued" if i % 2 else "sent")
    commit, producer, metrics = Commit(), Producer(), Counting()
    commit.lags = {p: lag for p in range(N_PARTS)}
    app = SimpleNamespace(producer=producer, in_recovery=False)
    topics = SimpleNamespace(events=Topic("events"), inputs=(Topic("as"), Topic("ac")))
    derived = SimpleNamespace(deadlines=deadlines, sizes=dict)
    timers = Timers(app, topics, commit, derived, AlertBook(metrics, SlaTable()), windows=None,
                    partition_of=part, alert_max_lag=1000, clock=lambda: T0 + 10 * n_due + 1)
    return timers, commit, producer, metrics, keys


def tick_s(timers: Timers) -> float:
    t = time.perf_counter()
    asyncio.run(timers.tick())
    return time.perf_counter() - t


def test_gated_deadlines_are_held_once_counted_once_and_checked_once_when_the_gate_opens() -> None:
    n = 100_000
    timers, commit, producer, metrics, keys = make(n, lag=5000)
    tick_s(timers)  # all fall due behind the gate: set aside and counted, nothing sent
    d = timers.derived.deadlines
    assert (producer.sent, metrics.suppressed, d.held_count()) == ([], n, n)
    assert len(timers.book.suppressed) == n
    # later ticks behind the gate touch none of them
    for _ in range(3):
        tick_s(timers)
    assert (producer.sent, metrics.suppressed, d.held_count()) == ([], n, n)
    commit.lags = {p: 0 for p in range(N_PARTS)}  # caught up
    tick_s(timers)
    assert sorted(k for k, _, _ in producer.sent) == sorted(k.encode() for k in keys)  # each once
    assert d.held_count() == 0 and len(d) == 0 and not timers.book.suppressed
    assert metrics.suppressed == n
    tick_s(timers)
    assert len(producer.sent) == n


def test_a_held_deadline_that_changed_is_not_checked() -> None:
    timers, commit, producer, _, keys = make(10, lag=5000)
    tick_s(timers)
    d = timers.derived.deadlines
    d.cancel(keys[0])  # delivered meanwhile
    d.schedule(keys[1], T0 + 10**12, "sent")  # advanced: a new deadline, not due
    commit.lags = {p: 0 for p in range(N_PARTS)}
    tick_s(timers)
    assert sorted(k for k, _, _ in producer.sent) == sorted(k.encode() for k in keys[2:])
    assert d.get(keys[1]) == (T0 + 10**12, "sent")


def test_gate_is_per_partition() -> None:
    timers, commit, producer, metrics, keys = make(400, lag=0)
    commit.lags[0] = 5000
    tick_s(timers)
    part = timers.partition_of
    assert {part(k.decode()) for k, _, _ in producer.sent} == {1, 2, 3}
    assert metrics.suppressed == sum(1 for k in keys if part(k) == 0) > 0


def test_a_tick_behind_a_gate_costs_about_what_an_empty_tick_costs() -> None:
    """Printed: the tick with 100k held deadlines on lagging partitions vs a tick with none.
    Asserted on work, not time: nothing is popped, re-scheduled or counted again."""
    held, _, _, _, _ = make(100_000, lag=5000)
    tick_s(held)
    empty, _, _, _, _ = make(0, lag=5000)
    t_held = min(tick_s(held) for _ in range(20))
    t_empty = min(tick_s(empty) for _ in range(20))
    print(f"\ntick with 100,000 held deadlines on lagging partitions: {t_held * 1e6:.0f} µs; "
          f"with none: {t_empty * 1e6:.0f} µs")
    assert held.derived.deadlines.held_count() == 100_000
