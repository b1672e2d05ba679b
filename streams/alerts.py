"""The alert records of SPEC §6, built in one place (no PII: kinds, stages, times only).

The ``alerted`` mark bits a message's state keeps for them are in :mod:`streams.stuck`
(:func:`~streams.stuck.stuck_bit`, :func:`~streams.stuck.resolved_bit`).
"""
from __future__ import annotations

from typing import Any

from .kinds import STAGES
from .lifecycle import Summary
from .stuck import Deadline
from .timeparse import US_PER_S, format_ts_us


def _ts(us: int | None) -> str | None:
    return format_ts_us(us) if us is not None else None


def stuck_alert(source: str, tenant: str, message_id: str, s: Summary, d: Deadline,
                detected_us: int | None) -> dict[str, Any]:
    """``{"type": "stuck", ...}``; ``detected_us`` None: the time it was raised is not known
    (a row rebuilt from the table after a restart or a partition move)."""
    return {"type": "stuck", "source": source, "tenant": tenant, "channel": s.channel, "message_id": message_id,
            "stage": d.stage, "since": format_ts_us(d.since_us), "deadline": format_ts_us(d.deadline_us),
            "detected_at": _ts(detected_us), "sla_seconds": d.sla_s}


def resolved_stage(s: Summary) -> str | None:
    """The stage a resolved message went on to (``failed`` for a failed outcome)."""
    if s.failed:
        return "failed"
    return STAGES[s.highest] if s.reached else None


def resolved_alert(tenant: str, message_id: str, s: Summary, rank: int, detected_us: int) -> dict[str, Any]:
    """``{"type": "resolved", ...}`` for the stuck stage of ``rank``, when ``s`` advanced or failed."""
    at = s.failed_at if s.failed and s.failed_at is not None else s.reached.get(s.highest, detected_us)
    since = s.reached.get(rank)
    return {"type": "resolved", "source": s.source, "tenant": tenant, "channel": s.channel,
            "message_id": message_id, "stage": STAGES[rank], "since": _ts(since),
            "resolved_stage": resolved_stage(s), "resolved_at": format_ts_us(at),
            "time_to_resolve_s": (at - since) / US_PER_S if since is not None else None,
            "detected_at": format_ts_us(detected_us)}


def campaign_error_alert(alert: dict[str, Any], detected_us: int) -> dict[str, Any]:
    """The ``campaign_error`` record of a normalized ``camp_error`` (``NonLifecycle.alert``)."""
    out = {k: v for k, v in alert.items() if k != "event_ts_us"}
    out["detected_at"] = format_ts_us(detected_us)
    return out
