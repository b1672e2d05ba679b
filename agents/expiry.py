"""Message expiry (SPEC §5) without an index entry in RAM per message.

Each owned partition's stored message states are swept in slices, from a cursor, so that the
whole partition is read once per ``sweep_s``; a state past ``message_retention`` (read from its
header alone) becomes an expire record on the message's own partition, and the lifecycle agent
checks it again and deletes it (``streams.step``). A message is so deleted at most ``sweep_s``
after it expired; RAM holds one cursor and one start time per partition. A sweep that reaches a
partition's end early (a small partition: slices are at least ``MIN_SLICE``) starts over no
sooner than ``sweep_s`` after it started.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

from streams.lifecycle import touched_us_of

#: ``(partition, after_key, limit)`` -> up to ``limit`` stored ``(key, value)`` of the partition
#: after ``after_key`` (from its start when None), in key order; fewer at the partition's end.
Scan = Callable[[int, "bytes | None", int], list[tuple[bytes, bytes]]]

MIN_SLICE = 100


class ExpirySweep:
    def __init__(self, scan: Scan, *, retention_us: int, sweep_s: float, tick_s: float) -> None:
        self.scan = scan
        self.retention_us = retention_us
        self.sweep_s = min(sweep_s, max(retention_us / 2e6, tick_s))  # at most half the retention
        self.sweep_us = self.sweep_s * 1e6
        self.tick_s = tick_s
        self.cursors: dict[int, bytes | None] = {}
        self.started_us: dict[int, int] = {}  # partition -> when its current sweep started

    def keep(self, partitions: Iterable[int]) -> None:
        """Own exactly ``partitions`` (after a rebalance): new ones are swept from their start."""
        keep = set(partitions)
        self.cursors = {p: c for p, c in self.cursors.items() if p in keep}
        self.started_us = {p: t for p, t in self.started_us.items() if p in keep}

    def due(self, now_us: int, sizes: dict[int, int]) -> list[bytes]:
        """Keys of expired states in this tick's slice of every partition of ``sizes``
        (partition -> how many states it holds, which sets the slice)."""
        out: list[bytes] = []
        limit_of = self.tick_s / self.sweep_s
        horizon = now_us - self.retention_us
        for p, n in sizes.items():
            if self.cursors.get(p) is None:  # a sweep of p (re)starts
                started = self.started_us.get(p)
                if started is not None and now_us - started < self.sweep_us:
                    continue  # the last one ended early: not before a period has passed
                self.started_us[p] = now_us
            limit = max(MIN_SLICE, math.ceil(n * limit_of))
            items = self.scan(p, self.cursors.get(p), limit)
            for key, raw in items:
                if raw and touched_us_of(raw) < horizon:
                    out.append(key)
            if len(items) < limit:  # the end: the next slice starts over
                self.cursors[p] = None
            else:
                self.cursors[p] = items[-1][0]
        return out
