"""``GET /messages/{source}/{tenant}/{message_id}`` (or ``/messages?source=&tenant=&id=``):
one message's lifecycle, answered by the worker that owns its table partition (one hop).

No PII: kinds, timestamps, stages, counts and alert marks only.
"""
from __future__ import annotations

from typing import Any

from streams.alerts import resolved_stage
from streams.events import message_key
from streams.kinds import KINDS, SOURCES, STAGES
from streams.lifecycle import MessageState, summarize
from streams.stuck import STUCK_STAGES, deadline, is_stuck, resolved_bit, stuck_bit
from streams.timeparse import US_PER_S, format_ts_us

from ..clock import now_us
from ..peers import FORWARDED_HEADER, SERVED_BY_HEADER, ident
from .deps import WebDeps
from .guard import error, json_response


def _ts(us: int | None) -> str | None:
    return format_ts_us(us) if us is not None else None


def message_view(deps: Any, source: str, tenant: str, message_id: str, raw: bytes,
                 now: int | None = None) -> dict[str, Any]:
    """JSON of one message's state. ``deps`` needs ``slas``, ``window_us``, ``is_open`` and
    ``settings.message_retention_s``."""
    now = now_us() if now is None else now
    st = MessageState.from_bytes(raw)
    s = summarize(source, st.events, st.campaign)
    d = deadline(s, tenant, deps.slas)
    outcome = "delivered" if s.delivered else "failed" if s.failed else "none"
    key = message_key(source, tenant, message_id).encode()
    stuck = None
    if d is not None:
        stuck = {"stage": d.stage, "since": _ts(d.since_us), "deadline": _ts(d.deadline_us),
                 "sla_seconds": d.sla_s, "stuck_now": is_stuck(d, now),
                 "alerted": bool(st.alerted & stuck_bit(STAGES.index(d.stage)))}
    alerts = []
    for rank, stage in enumerate(STUCK_STAGES):
        if st.alerted & stuck_bit(rank):
            alerts.append({"type": "stuck", "stage": stage, "since": _ts(s.reached.get(rank)),
                           "open": not st.alerted & resolved_bit(rank) and deps.is_open(key)})
        if st.alerted & resolved_bit(rank):
            alerts.append({"type": "resolved", "stage": stage, "resolved_stage": resolved_stage(s)})
    window_us = deps.window_us
    retention_us = deps.settings.message_retention_s * US_PER_S
    return {
        "source": source, "tenant": tenant, "message_id": message_id, "channel": s.channel,
        "outcome": outcome, "conflicting": s.conflicting,
        "stages": [{"stage": STAGES[r], "at": _ts(ts)} for r, ts in sorted(s.reached.items())],
        "highest_stage": STAGES[s.highest] if s.reached else None,
        "failed_at": _ts(s.failed_at) if s.failure_seen else None,
        "annotations": list(s.annotations),
        "opens_total": s.opens_total, "clicks_total": s.clicks_total,
        "entry_at": _ts(s.entry_us),
        "window_start": _ts(s.window_start_us(window_us)),
        "window_end": _ts(s.window_start_us(window_us) + window_us),
        "last_event_at": _ts(s.last_us),
        "events": [{"kind": KINDS[code].name, "at": _ts(ts)} for ts, code in st.events],
        "updated_at": _ts(st.touched_us) if st.touched_us else None,
        "expires_at": _ts(st.touched_us + retention_us) if st.touched_us else None,
        "stuck": stuck,
        "alerts": alerts,
    }


def _params(request: Any) -> tuple[str | None, str | None, str | None]:
    mi, q = request.match_info, request.query
    return (mi.get("source") or q.get("source"), mi.get("tenant") or q.get("tenant"),
            mi.get("message_id") or q.get("id") or q.get("message_id"))


class MessageViews:
    def __init__(self, deps: WebDeps) -> None:
        self.deps = deps

    async def view_message(self, web: Any, request: Any) -> Any:
        deps = self.deps
        source, tenant, mid = _params(request)
        if source not in SOURCES:
            return error(web, 400, "unknown source", sources=list(SOURCES))
        if not tenant or not mid:
            return error(web, 400, "tenant and message id are required")
        key = message_key(source, tenant, mid).encode()
        me = deps.peers.me
        try:
            dest = deps.app.router.key_store(deps.table_name, key)
        except KeyError:
            return error(web, 503, "partition ownership unknown (rebalancing); retry")
        if ident(dest) != ident(me) and request.query.get("local") != "1":
            if request.headers.get(FORWARDED_HEADER):
                return error(web, 503, "workers disagree on the partition owner (rebalancing); retry")
            try:
                status, body, ctype, served_by = await deps.peers.forward(dest, str(request.rel_url))
            except Exception as exc:  # noqa: BLE001 - the owner is down or moving: retryable
                return error(web, 503, f"owning worker did not answer ({type(exc).__name__}); retry")
            return web.bytes(body, content_type=ctype, status=status, headers={SERVED_BY_HEADER: served_by})
        if not deps.ready():
            return error(web, 503, "worker is rebalancing or recovering; retry")
        raw = deps.load(key)
        headers = {SERVED_BY_HEADER: me}
        if not raw:
            return json_response(web, {"error": "unknown message"}, status=404, headers=headers)
        body = message_view(deps, source, tenant, mid, raw)
        body["served_by"] = me
        return json_response(web, body, headers=headers)
