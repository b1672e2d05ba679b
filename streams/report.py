"""The funnel report (SPEC §9): the offline engine behind ``funnelwatch replay``.

It runs the same normalization and lifecycle code as the live worker, without Kafka.
Events are folded into per-message states as they come; summaries and the funnel are
computed once at the end (the result is a function of the set of events, so folding
first and summarizing last gives exactly what the incremental worker reaches).
"""
from __future__ import annotations

from collections import Counter
from typing import IO, Iterable

import orjson

from .events import CanonicalEvent, Ignored, NonLifecycle, Rejected, split_message_key
from .lifecycle import N_FIELDS, VECTOR_FIELDS, MessageState, RowKey, Summary, summarize
from .normalize import DEFAULT_MAX_EVENT_BYTES, normalize
from .stuck import SlaTable, deadline
from .timeparse import US_PER_S, format_ts_us

DEFAULT_WINDOW_S = 3600


def window_row(key: RowKey, vector: Iterable[int]) -> dict:
    """One SPEC §9 ``windows`` row."""
    window_us, tenant, channel = key
    row: dict = {"window_start": format_ts_us(window_us), "tenant": tenant, "channel": channel}
    row.update(zip(VECTOR_FIELDS, vector))
    return row


def window_rows(funnel: dict[RowKey, list[int] | tuple[int, ...]]) -> list[dict]:
    """Rows sorted by (window_start, tenant, channel), leaving out rows with ``entered == 0``."""
    return [window_row(k, funnel[k]) for k in sorted(funnel) if funnel[k][0] != 0]


class Replay:
    """Accumulates raw lines; ``report()`` gives the SPEC §9 object."""

    def __init__(self, *, window_s: int = DEFAULT_WINDOW_S, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
                 slas: SlaTable | None = None):
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_us = window_s * US_PER_S
        self.max_event_bytes = max_event_bytes
        self.slas = slas or SlaTable()
        self.lines = self.applied = self.duplicates = 0
        self.rejected: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.non_lifecycle: Counter[str] = Counter()
        self.states: dict[str, tuple[str, MessageState]] = {}
        self.latest_us: int | None = None

    def feed_line(self, line: bytes) -> None:
        if not line.strip():
            return  # blank lines are skipped and not counted
        self.lines += 1
        out = normalize(line.rstrip(b"\r\n") if line.endswith(b"\n") else line, self.max_event_bytes)
        if type(out) is CanonicalEvent:
            self.feed_event(out)
        elif type(out) is Rejected:
            self.rejected[out.reason] += 1
        elif type(out) is NonLifecycle:
            self.non_lifecycle[out.kind] += 1
        elif type(out) is Ignored:
            self.ignored[out.reason] += 1
        else:  # pragma: no cover - a new outcome type without a bucket is a bug
            raise TypeError(f"unhandled outcome {out!r}")

    def feed_event(self, ev: CanonicalEvent) -> None:
        key = ev.key
        entry = self.states.get(key)
        if entry is None:
            entry = self.states[key] = (ev.tenant, MessageState())
        if entry[1].add(ev):
            self.applied += 1
            if self.latest_us is None or ev.ts_us > self.latest_us:
                self.latest_us = ev.ts_us
        else:
            self.duplicates += 1

    def feed_stream(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.feed_line(line)

    def summaries(self) -> Iterable[tuple[str, str, Summary]]:
        for key, (tenant, state) in self.states.items():
            yield key, tenant, summarize(key.split("|", 1)[0], state.events)

    def report(self, now_us: int | None = None) -> dict:
        if now_us is None:
            now_us = self.latest_us if self.latest_us is not None else 0
        funnel: dict[RowKey, list[int]] = {}
        stuck = []
        for key, tenant, s in self.summaries():
            row = (s.window_start_us(self.window_us), tenant, s.channel)
            acc = funnel.get(row)
            if acc is None:
                acc = funnel[row] = [0] * N_FIELDS
            for i, x in enumerate(s.vector()):
                acc[i] += x
            d = deadline(s, tenant, self.slas)
            if d is not None and now_us > d.deadline_us:
                source, _, message_id = split_message_key(key)
                stuck.append((d.deadline_us, source, tenant, message_id, s.channel, d))
        stuck.sort(key=lambda t: t[:4])
        return {
            "input": {
                "lines": self.lines,
                "applied": self.applied,
                "duplicates": self.duplicates,
                "rejected": _nonzero(self.rejected),
                "ignored": _nonzero(self.ignored),
                "non_lifecycle": _nonzero(self.non_lifecycle),
            },
            "windows": window_rows(funnel),
            "stuck": [
                {"source": src, "tenant": tenant, "channel": ch, "message_id": mid, "stage": d.stage,
                 "since": format_ts_us(d.since_us), "deadline": format_ts_us(d.deadline_us)}
                for _, src, tenant, mid, ch, d in stuck
            ],
        }


def _nonzero(c: Counter[str]) -> dict[str, int]:
    return {k: c[k] for k in sorted(c) if c[k]}


def dumps_report(report: dict) -> bytes:
    return orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n"


def _rate(num: int, den: int) -> str:
    return f"{100.0 * num / den:5.1f}%" if den else "    - "


def format_table(report: dict) -> str:
    """A human-readable funnel table: counts and delivery/open/click rates per row."""
    inp = report["input"]
    lines = [
        f"input: {inp['lines']} lines, {inp['applied']} applied, {inp['duplicates']} duplicates, "
        f"{sum(inp['rejected'].values())} rejected, {sum(inp['ignored'].values())} ignored, "
        f"{sum(inp['non_lifecycle'].values())} non-lifecycle",
    ]
    if inp["rejected"]:
        lines.append("rejected: " + ", ".join(f"{k}={v}" for k, v in inp["rejected"].items()))
    hdr = (f"{'window_start':<21}{'tenant':<14}{'channel':<9}{'entered':>8}{'queued':>8}{'sent':>8}"
           f"{'deliv':>8}{'opened':>8}{'clicked':>8}{'failed':>8}{'deliv%':>8}{'open%':>8}{'click%':>8}")
    lines += ["", hdr, "-" * len(hdr)]
    for r in report["windows"]:
        lines.append(
            f"{r['window_start']:<21}{r['tenant'][:13]:<14}{r['channel']:<9}{r['entered']:>8}{r['queued']:>8}"
            f"{r['sent']:>8}{r['delivered']:>8}{r['opened']:>8}{r['clicked']:>8}{r['failed']:>8}"
            f"{_rate(r['delivered'], r['entered']):>8}{_rate(r['opened'], r['delivered']):>8}"
            f"{_rate(r['clicked'], r['delivered']):>8}")
    if not report["windows"]:
        lines.append("(no messages)")
    lines.append("")
    lines.append(f"stuck: {len(report['stuck'])}")
    for s in report["stuck"]:
        lines.append(f"  {s['source']} {s['tenant']} {s['channel']} {s['message_id']} at {s['stage']} "
                     f"since {s['since']}, deadline {s['deadline']}")
    return "\n".join(lines) + "\n"
