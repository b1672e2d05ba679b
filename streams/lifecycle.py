"""A message's lifecycle: its applied events, what they add up to, and the funnel delta.

The design rule (SPEC §5): a message's funnel contribution is a pure function of the
*set* of its applied events. ``apply`` adds one event to the set, recomputes the
contribution and returns the difference to apply to the funnel. Duplicates, reordering,
late events and moves between windows or channels are therefore correct by construction.

State is tiny and self-describing: a version byte, the stuck-alert marks, the time it was
last touched, and ``(kind code, timestamp)`` per applied event — a 12-byte header + 9 bytes per event
(a typical 4-event message is 48 bytes serialized). A message with a campaign (SPEC §11) is
version 2: the same, then which applied event carries it (a varint index) and the campaign id
itself, packed (:func:`_pack_campaign`): +4 bytes for an Altcraft id below 16384, +18 for a
UUID flow id. The name is never in the state (it lives in the campaign names table).
"""
from __future__ import annotations

import struct
import uuid
from bisect import bisect_left
from dataclasses import dataclass
from typing import NamedTuple

from .errors import StateCorrupt
from .events import CanonicalEvent
from .kinds import (
    ANNOTATIONS, DELIVERED, KINDS, LADDERS, OPENED, QUEUED, SENT, SOURCE_MIN_STAGE, STAGE_RANK,
)

# Funnel vector layout (SPEC §9 row order).
VECTOR_FIELDS = (
    "entered", "queued", "sent", "delivered", "opened", "clicked", "failed",
    "soft_bounced", "complained", "unsubscribed", "opens_total", "clicks_total",
)
_I_FAILED = 6
_I_ANN = {a: 7 + i for i, a in enumerate(ANNOTATIONS)}
_I_OPENS, _I_CLICKS = 10, 11
N_FIELDS = len(VECTOR_FIELDS)

_HEADER = struct.Struct("<BBqH")  # version, alerted bits, touched_us, n events
_EVENT = struct.Struct("<Bq")  # kind code, ts_us
_STATE_VERSION = 1  # no campaign
_STATE_VERSION_CAMPAIGN = 2  # + varint index of the campaign's event + packed campaign
_TAG_ALTCRAFT, _TAG_UUID_FLOW, _TAG_FLOW, _TAG_OTHER = 1, 2, 3, 4


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(raw: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = raw[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _pack_campaign(campaign: str) -> bytes:
    """A campaign id in as few bytes as round-trip exactly: an Altcraft id as a varint, a
    canonical (lowercase) UUID flow id as 16 bytes, anything else as length + UTF-8."""
    if campaign.startswith("altcraft:"):
        digits = campaign[9:]
        if digits.isascii() and digits.isdigit() and digits[0] != "0":
            return bytes((_TAG_ALTCRAFT,)) + _varint(int(digits))
    elif campaign.startswith("flow:"):
        flow = campaign[5:]
        if len(flow) == 36:
            try:
                u = uuid.UUID(flow)
            except ValueError:
                u = None
            if u is not None and str(u) == flow:
                return bytes((_TAG_UUID_FLOW,)) + u.bytes
        raw = flow.encode("utf-8", "surrogatepass")
        return bytes((_TAG_FLOW,)) + _varint(len(raw)) + raw
    raw = campaign.encode("utf-8", "surrogatepass")
    return bytes((_TAG_OTHER,)) + _varint(len(raw)) + raw


def _unpack_campaign(raw: bytes, i: int) -> tuple[str, int]:
    tag = raw[i]
    i += 1
    if tag == _TAG_ALTCRAFT:
        n, i = _read_varint(raw, i)
        return f"altcraft:{n}", i
    if tag == _TAG_UUID_FLOW:
        if len(raw) < i + 16:
            raise StateCorrupt("truncated campaign")
        return "flow:" + str(uuid.UUID(bytes=raw[i:i + 16])), i + 16
    if tag in (_TAG_FLOW, _TAG_OTHER):
        n, i = _read_varint(raw, i)
        if len(raw) < i + n:
            raise StateCorrupt("truncated campaign")
        text = raw[i:i + n].decode("utf-8", "surrogatepass")
        return ("flow:" + text if tag == _TAG_FLOW else text), i + n
    raise StateCorrupt(f"unknown campaign tag {tag}")


class MessageState:
    """The applied events of one message, plus bookkeeping for alerts and expiry, and the
    message's campaign (SPEC §11: that of the applied event with the smallest
    ``(timestamp, campaign)``; kept as a running minimum, so order does not matter)."""

    __slots__ = ("events", "alerted", "touched_us", "campaign", "campaign_ts")

    def __init__(self, events: list[tuple[int, int]] | None = None, alerted: int = 0, touched_us: int = 0,
                 campaign: str | None = None, campaign_ts: int = 0):
        self.events: list[tuple[int, int]] = events if events is not None else []  # sorted (ts_us, code)
        self.alerted = alerted  # bit per stage rank that got a `stuck` alert (SPEC §6: at most one)
        self.touched_us = touched_us  # processing time of the last applied event (expiry clock)
        self.campaign = campaign  # None: no applied event carries one
        self.campaign_ts = campaign_ts  # timestamp of the event that carries it (one of ``events``)

    def to_bytes(self) -> bytes:
        campaign = self.campaign
        events = self.events
        version = _STATE_VERSION if campaign is None else _STATE_VERSION_CAMPAIGN
        parts = [_HEADER.pack(version, self.alerted, self.touched_us, len(events))]
        parts.extend(_EVENT.pack(code, ts) for ts, code in events)
        if campaign is not None:
            parts.append(_varint(bisect_left(events, (self.campaign_ts,))))
            parts.append(_pack_campaign(campaign))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "MessageState":
        try:
            version, alerted, touched, n = _HEADER.unpack_from(raw, 0)
            end = _HEADER.size + n * _EVENT.size
            if version == _STATE_VERSION:
                if len(raw) != end:
                    raise StateCorrupt(f"bad state header (version {version}, {len(raw)} bytes)")
            elif version != _STATE_VERSION_CAMPAIGN or len(raw) <= end:
                raise StateCorrupt(f"bad state header (version {version}, {len(raw)} bytes)")
            events = [(ts, code) for code, ts in _EVENT.iter_unpack(raw[_HEADER.size:end])]
            if version == _STATE_VERSION:
                return cls(events, alerted, touched)
            index, i = _read_varint(raw, end)
            campaign, i = _unpack_campaign(raw, i)
            if i != len(raw) or index >= n:
                raise StateCorrupt(f"bad campaign trailer ({len(raw)} bytes)")
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise StateCorrupt(str(exc)) from exc
        return cls(events, alerted, touched, campaign, events[index][0])

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, MessageState) and self.events == other.events
                and self.alerted == other.alerted and self.touched_us == other.touched_us
                and self.campaign == other.campaign and (self.campaign is None or self.campaign_ts == other.campaign_ts))

    def __repr__(self) -> str:
        camp = f", campaign={self.campaign!r}, campaign_ts={self.campaign_ts}" if self.campaign is not None else ""
        return f"MessageState(events={self.events!r}, alerted={self.alerted}, touched_us={self.touched_us}{camp})"

    def add(self, ev: CanonicalEvent) -> bool:
        """Add an event to the set; False if an identical one was already applied (duplicate)."""
        return self.add_ident(ev.ts_us, ev.kind.code, ev.campaign)

    def add_ident(self, ts_us: int, code: int, campaign: str | None = None) -> bool:
        """:meth:`add` for an event given as its identity within the message (timestamp, kind
        code) and the campaign it carries. A duplicate changes nothing, its campaign included."""
        ident = (ts_us, code)
        events = self.events
        if not events or ident > events[-1]:  # the common case: in order
            events.append(ident)
        else:
            i = bisect_left(events, ident)
            if events[i] == ident:
                return False
            events.insert(i, ident)
        if campaign is not None and (self.campaign is None or ts_us < self.campaign_ts or (
                ts_us == self.campaign_ts and campaign < self.campaign)):
            self.campaign, self.campaign_ts = campaign, ts_us
        return True


class Summary(NamedTuple):
    """What a message's applied events add up to. Immutable (a named tuple: cheap to build,
    which matters as ``apply`` builds two per event and a replay one per message)."""

    source: str
    channel: str
    entry_us: int
    last_us: int
    reached: dict[int, int]  # stage rank -> stage_reached_at (earliest evidence, SPEC §6)
    failed: bool  # outcome failed: failure evidence and no delivery evidence
    failure_seen: bool
    conflicting: bool  # delivery evidence *and* a failure event
    failed_at: int | None
    annotations: tuple[str, ...]
    opens_total: int
    clicks_total: int
    campaign: str | None  # SPEC §11 (None: no campaign)

    @property
    def delivered(self) -> bool:
        return DELIVERED in self.reached

    @property
    def highest(self) -> int:
        return max(self.reached) if self.reached else -1

    def window_start_us(self, window_us: int) -> int:
        return self.entry_us // window_us * window_us

    def vector(self) -> tuple[int, ...]:
        """The message's contribution to its funnel row, in ``VECTOR_FIELDS`` order."""
        v = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, self.opens_total, self.clicks_total]  # entered = 1
        for rank in self.reached:
            v[1 + rank] = 1
        if self.failed:
            v[_I_FAILED] = 1
        for a in self.annotations:
            v[_I_ANN[a]] = 1
        return tuple(v)


# Implied stages per (source, channel, reached rank), precomputed.
def _implied(source: str, channel: str, rank: int) -> tuple[int, ...]:
    ladder = LADDERS[channel]
    lo = SOURCE_MIN_STAGE[source]
    if rank in ladder:
        return tuple(s for s in ladder if lo <= s <= rank)
    # An explicit open on a ladder without `opened` (sms, telegram): it counts as opened and,
    # being delivery evidence, implies the ladder up to delivered; nothing implies it.
    return tuple(s for s in ladder if lo <= s <= DELIVERED) + (rank,)


_IMPLIED = {(src, ch, r): _implied(src, ch, r) for src in SOURCE_MIN_STAGE for ch in LADDERS for r in range(5)}
# Per (source, channel): for each kind code, the stage ranks its event reaches or implies (empty
# for failures and annotations). Per kind code: what else it does — "failed", an annotation name,
# "open"/"click" (a total), or None. Two tuple lookups per event instead of attribute chains.
_IMPLIED_BY_CODE = {
    (src, ch): tuple(_IMPLIED[(src, ch, STAGE_RANK[k.effect])] if k.effect in STAGE_RANK else () for k in KINDS)
    for src in SOURCE_MIN_STAGE for ch in LADDERS
}
_EXTRA = tuple(k.total if k.effect in STAGE_RANK else k.effect for k in KINDS)
_CHANNEL = tuple(k.channel for k in KINDS)
_new_summary = tuple.__new__


def summarize(source: str, events: list[tuple[int, int]], campaign: str | None = None) -> Summary:
    """Fold a message's applied events (sorted ``(ts_us, code)``) into a Summary; ``campaign``
    is the message's (``MessageState.campaign``). Pure."""
    if not events:
        raise ValueError("a message without applied events has no summary")
    channel = "unknown"
    for _, code in events:  # sorted: the first channel-bearing event (earliest, lowest code) wins
        ch = _CHANNEL[code]
        if ch is not None:
            channel = ch
            break
    implied = _IMPLIED_BY_CODE[(source, channel)]
    extra = _EXTRA
    reached: dict[int, int] = {}
    failure_seen = False
    failed_at = None
    ann: set[str] | None = None
    opens = clicks = 0
    for ts, code in events:
        for s in implied[code]:
            if s not in reached:  # events are sorted by time: first evidence is the earliest
                reached[s] = ts
        x = extra[code]
        if x is not None:
            if x == "open":
                opens += 1
            elif x == "click":
                clicks += 1
            elif x == "failed":
                if not failure_seen:
                    failure_seen, failed_at = True, ts
            elif ann is None:
                ann = {x}
            else:
                ann.add(x)
    delivered = DELIVERED in reached
    return _new_summary(Summary, (  # Summary(...) without the Python-level __new__ frame
        source, channel, events[0][0], events[-1][0], reached,
        failure_seen and not delivered, failure_seen, failure_seen and delivered, failed_at,
        tuple(a for a in ANNOTATIONS if a in ann) if ann else (), opens, clicks, campaign,
    ))


RowKey = tuple[int, str, str]  # (window_start_us, tenant, channel): a SPEC §9 row
CampaignKey = tuple[int, str, str, "str | None"]  # ... and the campaign: a SPEC §11 row
Delta = list[tuple[CampaignKey, tuple[int, ...]]]


def contribution_delta(tenant: str, window_us: int, old: Summary | None, new: Summary | None) -> Delta:
    """What to add to the funnel when a message's summary goes from ``old`` to ``new``, by
    ``(window_start_us, tenant, channel, campaign)`` (the first three are its §9 row)."""
    out: Delta = []
    old_key = (old.window_start_us(window_us), tenant, old.channel, old.campaign) if old is not None else None
    new_key = (new.window_start_us(window_us), tenant, new.channel, new.campaign) if new is not None else None
    if old is not None and new is not None and old_key == new_key:
        d = tuple(b - a for a, b in zip(old.vector(), new.vector()))
        if any(d):
            out.append((new_key, d))  # type: ignore[arg-type]
        return out
    if old is not None:
        out.append((old_key, tuple(-x for x in old.vector())))  # type: ignore[arg-type]
    if new is not None:
        out.append((new_key, new.vector()))  # type: ignore[arg-type]
    return out


@dataclass(slots=True)
class ApplyResult:
    state: MessageState
    duplicate: bool
    old: Summary | None
    new: Summary | None
    delta: Delta
    out_of_order: bool = False  # older than an event already applied
    moved: bool = False  # the message's funnel row changed (window or channel)
    new_stages: tuple[int, ...] = ()
    new_conflict: bool = False


def apply(state: MessageState | None, ev: CanonicalEvent, *, window_us: int, now_us: int) -> ApplyResult:
    """Apply one event to a message's state and return the funnel delta (empty for a duplicate)."""
    if state is None:
        state = MessageState()
    old = summarize(ev.source, state.events, state.campaign) if state.events else None
    out_of_order = bool(state.events) and ev.ts_us < state.events[-1][0]
    if not state.add(ev):
        return ApplyResult(state, True, old, old, [])
    state.touched_us = now_us
    new = summarize(ev.source, state.events, state.campaign)
    delta = contribution_delta(ev.tenant, window_us, old, new)
    moved = old is not None and (
        old.channel != new.channel or old.window_start_us(window_us) != new.window_start_us(window_us))
    new_stages = tuple(r for r in new.reached if old is None or r not in old.reached)
    new_conflict = new.conflicting and not (old is not None and old.conflicting)
    return ApplyResult(state, False, old, new, delta, out_of_order, moved, new_stages, new_conflict)


def expired(state: MessageState, *, now_us: int, retention_us: int) -> bool:
    """SPEC §5: message state expires ``message_retention`` after its last event."""
    return now_us - state.touched_us > retention_us


_TOUCHED = struct.Struct("<q")


def touched_us_of(raw: bytes) -> int:
    """``MessageState.from_bytes(raw).touched_us`` read from the header alone (any version)."""
    return _TOUCHED.unpack_from(raw, 2)[0]


__all__ = [
    "ApplyResult", "CampaignKey", "Delta", "MessageState", "RowKey", "Summary", "VECTOR_FIELDS", "apply",
    "contribution_delta", "expired", "summarize", "touched_us_of", "QUEUED", "SENT", "OPENED",
]
