"""The funnel report (SPEC §9): the offline engine behind ``funnelwatch replay``.

It runs the same normalization and lifecycle code as the live worker, without Kafka.
Events are folded into per-message states as they come; summaries and the funnel are
computed once at the end (the result is a function of the set of events, so folding
first and summarizing last gives exactly what the incremental worker reaches).
"""
from __future__ import annotations

import gc
from collections import Counter
from typing import IO, Iterable

import orjson

from .campaigns import CampaignNames
from .events import CanonicalEvent, Ignored, NonLifecycle, Rejected, message_key
from .kinds import DELIVERED
from .lifecycle import VECTOR_FIELDS, CampaignKey, MessageState, RowKey, Summary, summarize
from .normalize import DEFAULT_MAX_EVENT_BYTES, normalize_lite
from .stuck import SlaTable, deadline
from .timeparse import US_PER_S, format_ts_us

DEFAULT_WINDOW_S = 3600
_NO_TIME = -(1 << 80)  # below any parseable timestamp: "no event yet" without a None check per event


def window_row(key: RowKey, vector: Iterable[int]) -> dict:
    """One SPEC §9 ``windows`` row."""
    window_us, tenant, channel = key
    row: dict = {"window_start": format_ts_us(window_us), "tenant": tenant, "channel": channel}
    row.update(zip(VECTOR_FIELDS, vector))
    return row


def window_rows(funnel: dict[RowKey, list[int] | tuple[int, ...]] | dict[CampaignKey, list[int]]) -> list[dict]:
    """Rows sorted by (window_start, tenant, channel), leaving out rows with ``entered == 0``.
    Keys with a campaign (``(w, tenant, channel, campaign)``) are summed into their row."""
    if any(len(k) > 3 for k in funnel):
        rows: dict[RowKey, list[int]] = {}
        for k, vec in funnel.items():
            acc = rows.get(k[:3])
            if acc is None:
                rows[k[:3]] = list(vec)
            else:
                for i, x in enumerate(vec):
                    acc[i] += x
        funnel = rows
    return [window_row(k, funnel[k]) for k in sorted(funnel) if funnel[k][0] != 0]


def campaign_report_rows(funnel: dict[CampaignKey, list[int]], names: CampaignNames) -> list[dict]:
    """SPEC §11 ``campaigns`` rows of a funnel keyed by ``(w, tenant, channel, campaign)``: the §9
    row plus ``campaign`` and ``campaign_name``, sorted by ``(window_start, tenant, channel,
    campaign)`` with ``null`` first; rows with ``entered == 0`` left out."""
    out = []
    for k in sorted(funnel, key=lambda k: (k[0], k[1], k[2], k[3] is not None, k[3] or "")):
        vec = funnel[k]
        if vec[0] == 0:
            continue
        r = window_row(k[:3], vec)  # type: ignore[arg-type]
        r["campaign"] = k[3]
        r["campaign_name"] = names.name(k[1], k[3])
        out.append(r)
    return out


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
        self.names = CampaignNames()  # SPEC §11 campaign names, from every event not rejected or ignored
        # (source, tenant, message_id) -> the message's applied events; the tuple is the identity
        # (SPEC §2) without building a message_key string per event.
        self.states: dict[tuple[str, str, str], MessageState] = {}
        self.latest_us: int | None = None

    def feed_line(self, line: bytes) -> None:
        self._feed((line,), pause_gc=False)

    def feed_lines(self, lines: Iterable[bytes]) -> None:
        """Feed raw lines (with or without their line ending). The bulk path: locals, no per-line calls
        beyond normalization, and no ``CanonicalEvent`` built (replay needs only identity and time)."""
        self._feed(lines, pause_gc=True)

    def _feed(self, lines: Iterable[bytes], pause_gc: bool) -> None:
        states, get = self.states, self.states.get
        note_name = self.names.note
        rejected, ignored, non_lifecycle = self.rejected, self.ignored, self.non_lifecycle
        mx = self.max_event_bytes
        n = applied = duplicates = 0
        latest = self.latest_us if self.latest_us is not None else _NO_TIME
        # Everything allocated here is acyclic (decoded JSON, tuples, states), and what survives is
        # long-lived: the cyclic GC would only rescan the growing state again and again (~10% of the
        # replay time). Pause it for the bulk load; reference counting still frees everything.
        gc_was_enabled = pause_gc and gc.isenabled()
        if gc_was_enabled:
            gc.disable()
        try:
            for line in lines:
                if line[:1] != b"{" and not line.strip():
                    continue  # blank lines are skipped and not counted
                n += 1
                if line[-1:] == b"\n":
                    line = line.rstrip(b"\r\n")
                out = normalize_lite(line, mx)
                if type(out) is tuple:
                    ts = out[4]
                    key = out[:3]  # (source, tenant, message_id)
                    campaign = out[5]
                    if out[6] is not None:  # named, applied or duplicate alike
                        note_name(out[1], campaign, ts, out[6])
                    st = get(key)
                    if st is None:
                        states[key] = MessageState([(ts, out[3].code)], 0, 0, campaign, ts)
                    elif not st.add_ident(ts, out[3].code, campaign):
                        duplicates += 1
                        continue
                    applied += 1
                    if ts > latest:
                        latest = ts
                elif type(out) is Rejected:
                    rejected[out.reason] += 1
                elif type(out) is NonLifecycle:
                    non_lifecycle[out.kind] += 1
                    if out.campaign_name is not None and out.campaign is not None:
                        note_name(out.tenant, out.campaign, out.ts_us, out.campaign_name)
                elif type(out) is Ignored:
                    ignored[out.reason] += 1
                else:  # pragma: no cover - a new outcome type without a bucket is a bug
                    raise TypeError(f"unhandled outcome {out!r}")
        finally:
            if gc_was_enabled:
                gc.enable()
            self.lines += n
            self.applied += applied
            self.duplicates += duplicates
            self.latest_us = latest if latest != _NO_TIME else None

    def feed_event(self, ev: CanonicalEvent) -> None:
        key = (ev.source, ev.tenant, ev.message_id)
        if ev.campaign_name is not None and ev.campaign is not None:
            self.names.note(ev.tenant, ev.campaign, ev.ts_us, ev.campaign_name)
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = MessageState()
        if st.add(ev):
            self.applied += 1
            if self.latest_us is None or ev.ts_us > self.latest_us:
                self.latest_us = ev.ts_us
        else:
            self.duplicates += 1

    def feed_stream(self, stream: IO[bytes]) -> None:
        self.feed_lines(stream)

    def summaries(self) -> Iterable[tuple[str, str, Summary]]:
        """``(message_key, tenant, summary)`` per message."""
        for (source, tenant, mid), state in self.states.items():
            yield message_key(source, tenant, mid), tenant, summarize(source, state.events, state.campaign)

    def report(self, now_us: int | None = None) -> dict:
        if now_us is None:
            now_us = self.latest_us if self.latest_us is not None else 0
        window_us, slas = self.window_us, self.slas
        rows: dict[CampaignKey, list[tuple[int, ...]]] = {}
        stuck = []
        for (source, tenant, message_id), state in self.states.items():  # self.summaries(), inlined
            s = summarize(source, state.events, state.campaign)
            row = (s.entry_us // window_us * window_us, tenant, s.channel, s.campaign)  # s.window_start_us(window_us)
            vectors = rows.get(row)
            if vectors is None:
                rows[row] = [s.vector()]
            else:
                vectors.append(s.vector())
            if s.failure_seen or DELIVERED in s.reached:
                continue  # deadline() is None: an outcome, or past `sent` (a fast path, same answer)
            d = deadline(s, tenant, slas)
            if d is not None and now_us > d.deadline_us:
                stuck.append((d.deadline_us, source, tenant, message_id, s.channel, d))
        funnel = {row: [sum(col) for col in zip(*vectors)] for row, vectors in rows.items()}
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
            "campaigns": campaign_report_rows(funnel, self.names),
        }


def _nonzero(c: Counter[str]) -> dict[str, int]:
    return {k: c[k] for k in sorted(c) if c[k]}


def dumps_report(report: dict) -> bytes:
    return orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n"


def _rate(num: int, den: int) -> str:
    return f"{100.0 * num / den:5.1f}%" if den else "    - "


def format_table(report: dict, by: str = "window") -> str:
    """A human-readable funnel table: counts and delivery/open/click rates per row; ``by="campaign"``:
    one row per window, tenant, channel and campaign (SPEC §11), named where a name is known."""
    inp = report["input"]
    lines = [
        f"input: {inp['lines']} lines, {inp['applied']} applied, {inp['duplicates']} duplicates, "
        f"{sum(inp['rejected'].values())} rejected, {sum(inp['ignored'].values())} ignored, "
        f"{sum(inp['non_lifecycle'].values())} non-lifecycle",
    ]
    if inp["rejected"]:
        lines.append("rejected: " + ", ".join(f"{k}={v}" for k, v in inp["rejected"].items()))
    by_campaign = by == "campaign"
    camp_hdr = f"{'campaign name':<24}" if by_campaign else ""
    hdr = (f"{'window_start':<21}{'tenant':<14}{'channel':<9}{camp_hdr}{'entered':>8}{'queued':>8}{'sent':>8}"
           f"{'deliv':>8}{'opened':>8}{'clicked':>8}{'failed':>8}{'deliv%':>8}{'open%':>8}{'click%':>8}"
           + ("  campaign" if by_campaign else ""))
    lines += ["", hdr, "-" * len(hdr)]
    rows = report["campaigns"] if by_campaign else report["windows"]
    for r in rows:
        camp = tail = ""
        if by_campaign:
            name = r["campaign_name"] or "-"
            camp = f"{name if len(name) < 24 else name[:22] + '…':<24}"
            tail = f"  {r['campaign'] or '(none)'}"
        lines.append(
            f"{r['window_start']:<21}{r['tenant'][:13]:<14}{r['channel']:<9}{camp}{r['entered']:>8}{r['queued']:>8}"
            f"{r['sent']:>8}{r['delivered']:>8}{r['opened']:>8}{r['clicked']:>8}{r['failed']:>8}"
            f"{_rate(r['delivered'], r['entered']):>8}{_rate(r['opened'], r['delivered']):>8}"
            f"{_rate(r['clicked'], r['delivered']):>8}{tail}")
    if not rows:
        lines.append("(no messages)")
    lines.append("")
    lines.append(f"stuck: {len(report['stuck'])}")
    for s in report["stuck"]:
        lines.append(f"  {s['source']} {s['tenant']} {s['channel']} {s['message_id']} at {s['stage']} "
                     f"since {s['since']}, deadline {s['deadline']}")
    return "\n".join(lines) + "\n"
