"""Stuck messages (SPEC §6): SLAs, deadlines, and an index of due deadlines.

The clock is always passed in (``now_us``); nothing here reads the time.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from .errors import ConfigError
from .kinds import CHANNELS, QUEUED, SENT, STAGES
from .lifecycle import Summary
from .timeparse import US_PER_S

DEFAULT_SLA_S: dict[str, dict[str, int]] = {
    "sms": {"queued": 120, "sent": 900},
    "email": {"queued": 300, "sent": 3600},
    "push": {"queued": 120, "sent": 900},
    "telegram": {"queued": 120, "sent": 900},
    "unknown": {"queued": 300, "sent": 3600},
}
#: Stages a message can be stuck at (SPEC §6): ``queued`` (→ sent) and ``sent`` (→ delivered).
STUCK_STAGES: tuple[str, ...] = (STAGES[QUEUED], STAGES[SENT])


def _same(name: Any) -> Any:
    return name


def check_sla_keys(value: Any, where: str = "SLA table",
                   key: Callable[[Any], Any] = _same) -> dict[Any, dict[Any, Any]]:
    """Validate the shape ``{channel: {stage: seconds}}`` with known channels and stages.

    Returns a new dict with the seconds as given (:func:`check_sla_seconds` checks them).
    ``key`` maps every channel and stage name before the check (the settings fold case);
    names mapped to the same channel are merged.  Raises :class:`ConfigError` naming ``where``.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be an object of channel -> {{stage: seconds}}")
    out: dict[Any, dict[Any, Any]] = {}
    for channel, stages in value.items():
        channel = key(channel)
        if channel not in CHANNELS:
            raise ConfigError(
                f"{where}: unknown channel {channel!r} (expected one of {', '.join(CHANNELS)})"
            )
        if not isinstance(stages, Mapping):
            raise ConfigError(f"{where}[{channel!r}] must be an object of stage -> seconds")
        checked: dict[Any, Any] = {}
        for stage, seconds in stages.items():
            stage = key(stage)
            if stage not in STUCK_STAGES:
                raise ConfigError(
                    f"{where}[{channel!r}]: unknown stage {stage!r} "
                    f"(expected one of {', '.join(STUCK_STAGES)})"
                )
            checked[stage] = seconds
        out.setdefault(channel, {}).update(checked)
    return out


def check_sla_seconds(table: Mapping[Any, Mapping[Any, Any]], where: str = "") -> None:
    """Every SLA in ``{channel: {stage: seconds}}`` must be a number > 0.

    The message names the SLA as ``where.channel.stage`` (just ``channel.stage`` without ``where``).
    """
    prefix = f"{where}." if where else ""
    for channel, stages in table.items():
        for stage, seconds in stages.items():
            if not isinstance(seconds, (int, float)) or seconds <= 0:
                raise ConfigError(f"SLA {prefix}{channel}.{stage} must be > 0 seconds, got {seconds!r}")


class SlaTable:
    """SLA seconds per (channel, stage), with per-tenant overrides merged over the defaults."""

    __slots__ = ("_default", "_tenant")

    def __init__(self, default: Mapping[str, Mapping[str, int]] | None = None,
                 tenant: Mapping[str, Mapping[str, Mapping[str, int]]] | None = None):
        self._default = self._merged(DEFAULT_SLA_S, default or {})
        self._tenant: dict[str, dict[str, dict[str, int]]] = {
            t: self._merged(self._default, chans, t) for t, chans in (tenant or {}).items()
        }

    @staticmethod
    def _merged(base: Mapping[str, Mapping[str, int]], overrides: Any,
                tenant: str | None = None) -> dict[str, dict[str, int]]:
        """``base`` (already valid) with the checked ``overrides`` merged per channel and stage."""
        where = "SLA defaults" if tenant is None else f"SLA of tenant {tenant!r}"
        checked = check_sla_keys(overrides, where)
        check_sla_seconds(checked, tenant or "")
        table = {ch: dict(st) for ch, st in base.items()}
        for ch, stages in checked.items():
            table.setdefault(ch, {}).update(stages)
        return table

    def sla_s(self, tenant: str | None, channel: str, stage: str) -> float:
        """The SLA for ``tenant`` (``None``: the channel defaults) at ``channel``/``stage``."""
        table = self._tenant.get(tenant, self._default)
        return table[channel][stage]


@dataclass(slots=True, frozen=True)
class Deadline:
    stage: str  # "queued" or "sent"
    since_us: int  # stage_reached_at
    deadline_us: int
    sla_s: float


def deadline(summary: Summary, tenant: str, slas: SlaTable) -> Deadline | None:
    """The message's pending deadline: highest stage queued/sent and no outcome; else None."""
    if summary.failure_seen or not summary.reached:
        return None
    highest = summary.highest
    if highest not in (QUEUED, SENT):
        return None
    stage = STAGES[highest]
    since = summary.reached[highest]
    sla = slas.sla_s(tenant, summary.channel, stage)
    return Deadline(stage, since, since + int(sla * US_PER_S), sla)


def pending_deadline(summary: Summary, tenant: str, alerted: int, slas: SlaTable) -> Deadline | None:
    """The deadline to watch: :func:`deadline`, unless its stage already got its stuck alert
    (``alerted`` marks, see :func:`stuck_bit`)."""
    d = deadline(summary, tenant, slas)
    return d if d is not None and not alerted & stuck_bit(STUCK_STAGES.index(d.stage)) else None


def is_stuck(d: Deadline | None, now_us: int) -> bool:
    return d is not None and now_us > d.deadline_us


class DeadlineIndex:
    """Pending deadlines of many messages; finds the due ones without scanning all of them.

    A min-heap of ``(deadline_us, key, stage)`` with lazy deletion: rescheduling or
    cancelling a key only updates ``_live``; stale heap entries are skipped when popped.
    ``pop_due`` costs O(d log n) for d due entries (plus skipped stale ones), independent of
    how many messages are in flight. Stale entries are compacted when they outnumber live ones.
    """

    __slots__ = ("_heap", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, str]] = []
        self._live: dict[str, tuple[int, str]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: str) -> bool:
        return key in self._live

    def get(self, key: str) -> tuple[int, str] | None:
        return self._live.get(key)

    def schedule(self, key: str, deadline_us: int, stage: str) -> None:
        cur = self._live.get(key)
        if cur == (deadline_us, stage):
            return
        self._live[key] = (deadline_us, stage)
        heapq.heappush(self._heap, (deadline_us, key, stage))
        if len(self._heap) > 2 * len(self._live) + 1024:
            self._compact()

    def cancel(self, key: str) -> None:
        self._live.pop(key, None)

    def next_deadline_us(self) -> int | None:
        while self._heap:
            d, key, stage = self._heap[0]
            if self._live.get(key) == (d, stage):
                return d
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now_us: int, limit: int | None = None) -> list[tuple[str, str, int]]:
        """Remove and return ``(key, stage, deadline_us)`` with ``deadline_us < now_us``, earliest first."""
        out: list[tuple[str, str, int]] = []
        heap, live = self._heap, self._live
        while heap and heap[0][0] < now_us and (limit is None or len(out) < limit):
            d, key, stage = heapq.heappop(heap)
            if live.get(key) == (d, stage):
                del live[key]
                out.append((key, stage, d))
        return out

    def items(self) -> Iterator[tuple[str, int, str]]:
        for key, (d, stage) in self._live.items():
            yield key, d, stage

    def _compact(self) -> None:
        self._heap = [(d, k, s) for k, (d, s) in self._live.items()]
        heapq.heapify(self._heap)


class PartitionedDeadlines:
    """Pending deadlines per table partition, and the due ones a gate holds back.

    A partition whose alerts are gated (SPEC §6: lagging, or recovering) has its due
    deadlines moved, once, from its heap to its *held* set (:meth:`hold_due`); they stay
    there, untouched by later ticks, until the gate opens (:meth:`release`) or the message
    changes (a new :meth:`schedule` or :meth:`cancel` takes it out). So a tick costs what
    fell due since the last one, not what waits behind a gate.
    """

    __slots__ = ("partition_of", "_heaps", "_held")

    def __init__(self, partition_of: Callable[[str], int]) -> None:
        self.partition_of = partition_of
        self._heaps: dict[int, DeadlineIndex] = {}
        self._held: dict[int, dict[str, tuple[int, str]]] = {}

    def __len__(self) -> int:
        return sum(map(len, self._heaps.values())) + self.held_count()

    def held_count(self) -> int:
        return sum(map(len, self._held.values()))

    def get(self, key: str) -> tuple[int, str] | None:
        p = self.partition_of(key)
        heap = self._heaps.get(p)
        return (heap.get(key) if heap is not None else None) or self._held.get(p, {}).get(key)

    def schedule(self, key: str, deadline_us: int, stage: str) -> None:
        p = self.partition_of(key)
        held = self._held.get(p)
        if held:
            held.pop(key, None)
        heap = self._heaps.get(p)
        if heap is None:
            heap = self._heaps[p] = DeadlineIndex()
        heap.schedule(key, deadline_us, stage)

    def cancel(self, key: str) -> None:
        p = self.partition_of(key)
        held = self._held.get(p)
        if held:
            held.pop(key, None)
        heap = self._heaps.get(p)
        if heap is not None:
            heap.cancel(key)

    def partitions(self) -> list[int]:
        return sorted(set(self._heaps) | {p for p, h in self._held.items() if h})

    def has_due(self, partition: int, now_us: int) -> bool:
        """Anything to do for ``partition`` at ``now_us``: due deadlines or held ones."""
        if self._held.get(partition):
            return True
        heap = self._heaps.get(partition)
        if heap is None:
            return False
        nxt = heap.next_deadline_us()
        return nxt is not None and nxt < now_us

    def pop_due(self, partition: int, now_us: int, limit: int | None = None) -> list[tuple[str, str, int]]:
        """Remove and return the due deadlines of ``partition`` (as :meth:`DeadlineIndex.pop_due`)."""
        heap = self._heaps.get(partition)
        return heap.pop_due(now_us, limit) if heap is not None else []

    def drop(self, partition: int) -> None:
        """Forget ``partition`` (revoked): O(1), whatever it holds."""
        self._heaps.pop(partition, None)
        self._held.pop(partition, None)

    def hold_due(self, partition: int, now_us: int) -> list[tuple[str, str, int]]:
        """Move the newly due deadlines of a gated ``partition`` to its held set; returns them."""
        due = self.pop_due(partition, now_us)
        if due:
            held = self._held.setdefault(partition, {})
            for key, stage, d in due:
                held[key] = (d, stage)
        return due

    def release(self, partition: int) -> list[tuple[str, str, int]]:
        """Empty ``partition``'s held set (its gate opened): ``(key, stage, deadline_us)``."""
        held = self._held.pop(partition, None)
        return [(key, stage, d) for key, (d, stage) in held.items()] if held else []



# --------------------------------------------------------------------------- alert marks
# ``MessageState.alerted`` records which alerts went out: bit ``rank`` = stuck alert for the
# stage of that rank (queued 0, sent 1), bit ``rank + RESOLVED_SHIFT`` = its resolved alert.
RESOLVED_SHIFT = 4


def stuck_bit(rank: int) -> int:
    return 1 << rank


def resolved_bit(rank: int) -> int:
    return 1 << (rank + RESOLVED_SHIFT)


def alert_mark(alert_type: object, stage: object) -> int:
    """The ``alerted`` bit an alert record stands for (0: not a per-message stuck/resolved alert)."""
    if stage not in STUCK_STAGES:
        return 0
    rank = STUCK_STAGES.index(stage)  # type: ignore[arg-type]
    if alert_type == "stuck":
        return stuck_bit(rank)
    if alert_type == "resolved":
        return resolved_bit(rank)
    return 0


def reconcile_from_us(last_write_us: Mapping[int, int | None], *, now_us: int, margin_us: int,
                      max_lookback_us: int) -> dict[int, int]:
    """Per table partition, from when to re-read the alerts topic after taking it over.

    A mark is written to the changelog only after its alert was acked, so a crash (or a
    hand-over) can lose the marks of alerts sent shortly before it — never earlier than the
    partition's last landed changelog write minus the time a batch takes (``margin_us``).
    A partition without any write reads back ``max_lookback_us``, which also caps the rest.
    """
    floor = now_us - max_lookback_us
    out: dict[int, int] = {}
    for part, last in last_write_us.items():
        out[part] = floor if last is None else max(floor, min(last, now_us) - margin_us)
    return out
