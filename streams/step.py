"""The per-message step (SPEC §5, §6): one message's ops of a batch in, its new state and
every effect out. Pure: the clock is passed in, nothing is sent or stored here.

The lifecycle agent calls :func:`step` once per message key per batch, then carries out the
:class:`Effects`: alerts are sent (and acked by Kafka) before the state that marks them is
written, the funnel delta goes to the worker's share, the deadline and expiry go to its
indexes, the facts to its metrics.

Ops (decoded from the internal lifecycle topic):

* ``(OP_EVENT, code, ts_us, code, ts_us, ...)``: lifecycle events (kind code, timestamp);
* ``(OP_EVENTS, code, ts_us, campaign, ...)``: the same, each with its campaign (SPEC §11, or None);
* ``(OP_CHECK, rank)``: the deadline of the stage of ``rank`` came due (the timer sent it);
* ``(OP_EXPIRE,)``: the message may be past ``message_retention``.

``published``: alerts found on the alerts topic whose marks the state may lack (taken back
after a takeover: a crash between an alert's ack and its mark's changelog write).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .alerts import resolved_alert, stuck_alert
from .events import CanonicalEvent, split_message_key
from .kinds import KINDS, STAGE_RANK, STAGES
from .lifecycle import Delta, MessageState, Summary, apply, contribution_delta, expired, summarize
from .stuck import STUCK_STAGES, Deadline, SlaTable, deadline, is_stuck, pending_deadline, resolved_bit, stuck_bit
from .timeparse import US_PER_S

OP_EVENT, OP_CHECK, OP_EXPIRE, OP_EVENTS = 0, 1, 2, 4
# Stage-to-stage latencies: queued→sent, sent→delivered, delivered→opened/clicked. A pair is
# observed once per message, at the event after which the message has both stages and a known
# channel: whatever order its events arrive in and however they are batched, the same pairs are
# observed under the same channel (a message whose channel never shows is not observed).
LATENCY_PAIRS = ((0, 1), (1, 2), (2, 3), (2, 4))
UNKNOWN_CHANNEL = "unknown"  # streams.kinds.CHANNELS: until an outbound event is seen
Published = Mapping[int, Mapping[str, Any]]  # alerted bit -> alert record found on the topic


@dataclass(slots=True, frozen=True)
class StepConfig:
    window_us: int
    retention_us: int
    slas: SlaTable


@dataclass(slots=True)
class Effects:
    """What one message's step did. ``state`` is the state after it (None: none, or expired)."""

    state: MessageState | None
    write: bool = False  # write ``state`` (one changelog record), after ``alerts`` are acked
    delete: bool = False  # expired: delete the stored state (``state`` is None then)
    created: int = 0  # times the message was created (new to the table, or back after expiring)
    inflight_delta: int = 0  # messages created (+1) and expired (-1) in this step
    source: str = ""
    tenant: str = ""
    delta: Delta = field(default_factory=list)  # funnel delta (row key, vector), all of ``source``
    retired: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # expired: (channel, vector)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # stuck/resolved, in order
    settled_stages: list[str] = field(default_factory=list)  # stuck stages resolved or expired
    schedule: bool = False  # update the deadline index with ``deadline`` (None: cancel)
    deadline: Deadline | None = None
    expiry_us: int | None = None  # (re)arm the expiry at this time
    open_alert: dict[str, Any] | None = None  # the message's open stuck alert, if any ...
    open_known: bool = False  # ... valid when True (else the open list is left as it is)
    published_used: bool = False  # ``published`` was merged into the state: drop it
    # Facts to count.
    duplicates: int = 0
    out_of_order: int = 0
    late: int = 0
    conflicts: int = 0
    latencies: list[tuple[str, str, str, float]] = field(default_factory=list)  # channel, from, to, s
    reconciled: list[str] = field(default_factory=list)  # alert types whose marks came from ``published``


def open_stuck(key_parts: tuple[str, str, str], st: MessageState, s: Summary, slas: SlaTable,
               sent: Iterable[dict[str, Any]] = ()) -> dict[str, Any] | None:
    """The message's open stuck alert: its current stage was alerted and not resolved.

    ``sent``: stuck alerts known to have gone out (just sent, or found on the topic); the one
    of the open stage is the row, else one is built without ``detected_at`` (not known)."""
    source, tenant, mid = key_parts
    d = deadline(s, tenant, slas)
    if d is None:
        return None
    rank = STAGE_RANK[d.stage]
    if not st.alerted & stuck_bit(rank) or st.alerted & resolved_bit(rank):
        return None
    for alert in sent:
        if alert["stage"] == d.stage:
            return alert
    return stuck_alert(source, tenant, mid, s, d, None)


def step(key: str, state: MessageState | None, ops: Sequence[Sequence[Any]], now_us: int, cfg: StepConfig,
         published: Published | None = None) -> Effects:
    """Apply ``ops`` (in order) to one message's ``state``; see the module doc."""
    parts = split_message_key(key)
    source, tenant, _ = parts
    fx = Effects(state, source=source, tenant=tenant)
    sent_alert: dict[str, Any] | None = None
    if state is not None and published:
        fx.write |= _merge_published(fx, state, published)
    for op in ops:
        kind = op[0]
        if kind == OP_EVENTS:
            for i in range(1, len(op), 3):
                _event(fx, parts, op[i], op[i + 1], now_us, cfg, published, op[i + 2])
        elif kind == OP_EVENT:
            for i in range(1, len(op), 2):
                _event(fx, parts, op[i], op[i + 1], now_us, cfg, published)
        elif kind == OP_CHECK:
            if fx.state is not None:
                sent_alert = _check(fx, parts, op[1], now_us, cfg) or sent_alert
        elif kind == OP_EXPIRE:
            if fx.state is not None:
                _expire(fx, now_us, cfg)
        else:  # a new op is a bug: crash loudly
            raise ValueError(f"unknown lifecycle op {kind!r}")
    st = fx.state
    if st is not None and not st.alerted:  # no stuck mark: nothing open (the common case, no fold)
        fx.open_known = True
    elif st is not None and (fx.write or fx.published_used):
        s = summarize(source, st.events, st.campaign)
        sent = [sent_alert] if sent_alert else []
        if fx.published_used and published:
            sent += [a for a in published.values() if a.get("type") == "stuck"]
        fx.open_alert = open_stuck(parts, st, s, cfg.slas, sent)
        fx.open_known = True
    elif fx.delete:
        fx.open_known = True
    return fx


def _merge_published(fx: Effects, st: MessageState, published: Published) -> bool:
    """Set the marks of alerts found on the topic; True if any was new (the state is then written)."""
    fx.published_used = True
    new = False
    for bit, alert in published.items():
        if not st.alerted & bit:
            st.alerted |= bit
            fx.reconciled.append(alert["type"])
            new = True
    return new


def _event(fx: Effects, parts: tuple[str, str, str], code: int, ts_us: int, now_us: int, cfg: StepConfig,
           published: Published | None, campaign: str | None = None) -> None:
    source, tenant, mid = parts
    state = fx.state
    res = apply(state, CanonicalEvent(source, tenant, mid, KINDS[code], ts_us, campaign), window_us=cfg.window_us,
                now_us=now_us)
    if res.duplicate:
        fx.duplicates += 1
        return
    new = res.new
    assert new is not None
    if state is None:
        fx.created += 1
        fx.inflight_delta += 1
        fx.delete = False  # expired earlier in this batch and back again: written, not deleted
    fx.state = st = res.state
    fx.write = True
    fx.delta.extend(res.delta)
    if res.out_of_order:
        fx.out_of_order += 1
    if res.moved or ts_us < now_us - cfg.window_us:
        fx.late += 1
    if res.new_conflict:
        fx.conflicts += 1
    old, reached = res.old, new.reached
    for a, b in LATENCY_PAIRS:
        if _latency_known(new, a, b) and not (old is not None and _latency_known(old, a, b)):
            fx.latencies.append((new.channel, STAGES[a], STAGES[b], (reached[b] - reached[a]) / US_PER_S))
    if state is None and published and not fx.published_used:
        _merge_published(fx, st, published)
    _resolve(fx, tenant, mid, st, new, now_us)
    _schedule(fx, tenant, st, new, cfg)


def _latency_known(s: Summary, a: int, b: int) -> bool:
    """The message has stages ``a`` and ``b`` (``a`` first) and a known channel."""
    reached = s.reached
    return s.channel != UNKNOWN_CHANNEL and a in reached and b in reached and reached[b] >= reached[a]


def _resolve(fx: Effects, tenant: str, mid: str, st: MessageState, s: Summary, now_us: int) -> None:
    """A stuck stage the message advanced past, or failed at: one ``resolved`` alert."""
    for rank in range(len(STUCK_STAGES)):
        if st.alerted & stuck_bit(rank) and not st.alerted & resolved_bit(rank):
            if s.highest > rank or s.failure_seen:
                fx.alerts.append(resolved_alert(tenant, mid, s, rank, now_us))
                st.alerted |= resolved_bit(rank)
                fx.settled_stages.append(STAGES[rank])


def _schedule(fx: Effects, tenant: str, st: MessageState, s: Summary, cfg: StepConfig) -> None:
    fx.schedule = True
    fx.deadline = pending_deadline(s, tenant, st.alerted, cfg.slas)
    fx.expiry_us = st.touched_us + cfg.retention_us


def _check(fx: Effects, parts: tuple[str, str, str], rank: int, now_us: int,
           cfg: StepConfig) -> dict[str, Any] | None:
    """A due deadline came back through the message's partition: alert once if still stuck."""
    st = fx.state
    assert st is not None
    if st.alerted & stuck_bit(rank):
        return None
    source, tenant, mid = parts
    s = summarize(source, st.events, st.campaign)
    d = deadline(s, tenant, cfg.slas)
    if d is None or STAGE_RANK[d.stage] != rank:
        return None
    if not is_stuck(d, now_us):  # not due yet (the clock of the timer ran ahead): re-arm
        fx.schedule, fx.deadline = True, d
        return None
    alert = stuck_alert(source, tenant, mid, s, d, now_us)
    fx.alerts.append(alert)
    st.alerted |= stuck_bit(rank)
    fx.write = True
    return alert


def _expire(fx: Effects, now_us: int, cfg: StepConfig) -> None:
    """Delete the state if it is past retention, else re-arm its expiry."""
    st = fx.state
    assert st is not None
    if not expired(st, now_us=now_us, retention_us=cfg.retention_us):
        fx.expiry_us = st.touched_us + cfg.retention_us
        return
    s = summarize(fx.source, st.events, st.campaign)
    fx.delta.extend(contribution_delta(fx.tenant, cfg.window_us, s, None))
    fx.retired.append((s.channel, s.vector()))
    fx.state = None
    fx.write = False
    fx.delete = True
    fx.inflight_delta -= 1
    fx.schedule, fx.deadline, fx.expiry_us = True, None, None
    fx.settled_stages.extend(STUCK_STAGES)
