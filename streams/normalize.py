"""Raw vendor record → canonical event, or a reason it can't be used (SPEC §1–§4, §7).

This is the hot path of both the worker and ``replay``: it validates by hand, in the
precedence order of SPEC §7, instead of building a pydantic model per event. The pydantic
models in :mod:`streams.schemas` document the same shapes; a differential test keeps the
two in agreement.
Nothing here raises on bad input, and no error text contains an input value (PII).
"""
from __future__ import annotations

import orjson

from .events import CanonicalEvent, Ignored, NonLifecycle, Outcome, Rejected
from .kinds import (
    ACTIVITY_SYNC, ALTCRAFT, AC_LIFECYCLE, AS_DEPRECATED, AS_LIFECYCLE, AS_NON_LIFECYCLE,
    altcraft_non_lifecycle,
)
from .timeparse import parse_ts_us

DEFAULT_MAX_EVENT_BYTES = 1 << 20
_MAX_ERROR_TEXT = 200


def detect_source(obj: dict) -> str | None:
    """SPEC §1: ``event_type`` → altcraft; ``kind`` and ``tenantId`` → activity_sync."""
    if "event_type" in obj:
        return ALTCRAFT
    if "kind" in obj and "tenantId" in obj:
        return ACTIVITY_SYNC
    return None


def normalize(raw: bytes | str, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Outcome:
    """Classify one raw record. Never raises for any input bytes."""
    if len(raw) > max_event_bytes:
        return Rejected("too_large", f"record of {len(raw)} bytes exceeds max_event_bytes={max_event_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejected("invalid_json", _json_error(exc))
    return normalize_obj(obj)


def normalize_obj(obj: object) -> Outcome:
    """Classify an already-decoded JSON value."""
    if type(obj) is not dict:
        return Rejected("not_an_object", f"top-level JSON value is {_jtype(obj)}, not an object")
    source = detect_source(obj)
    if source is ALTCRAFT:
        return _altcraft(obj)
    if source is ACTIVITY_SYNC:
        return _activity_sync(obj)
    return Rejected("unknown_source", "object has neither event_type nor kind+tenantId")


def _activity_sync(obj: dict) -> Outcome:
    version = obj.get("version")
    if version is not None and version != "1.0":
        return Rejected("unsupported_version", "version is not \"1.0\"", ACTIVITY_SYNC, obj.get("kind") if type(obj.get("kind")) is str else None)
    kind = obj["kind"]
    lifecycle = AS_LIFECYCLE.get(kind) if type(kind) is str else None
    if lifecycle is None:
        if type(kind) is str and kind in AS_DEPRECATED:
            return Rejected("deprecated_kind", f"v0.0 kind {kind!r} is not supported", ACTIVITY_SYNC, kind)
        if type(kind) is not str or kind not in AS_NON_LIFECYCLE:
            return Rejected("unknown_kind", "kind is not an Activity Sync v1.0 kind", ACTIVITY_SYNC)
    ts_us = parse_ts_us(obj.get("timestamp"))
    if ts_us is None:
        return Rejected("schema", "timestamp missing or not RFC 3339 with zone", ACTIVITY_SYNC, kind)
    tenant = obj["tenantId"]
    if type(tenant) is not str or not tenant:
        return Rejected("schema", "tenantId must be a non-empty string", ACTIVITY_SYNC, kind)
    if lifecycle is None:
        return NonLifecycle(ACTIVITY_SYNC, kind, tenant, ts_us)
    data = obj.get("data")
    if data is None:
        return Rejected("missing_message_id", "data.messageId is missing", ACTIVITY_SYNC, kind)
    if type(data) is not dict:
        return Rejected("schema", "data must be an object", ACTIVITY_SYNC, kind)
    mid = data.get("messageId")
    if mid is not None and type(mid) is not str:
        return Rejected("schema", "data.messageId must be a string", ACTIVITY_SYNC, kind)
    if not mid or mid.isspace():
        return Rejected("missing_message_id", "data.messageId is missing or empty", ACTIVITY_SYNC, kind)
    flow_id = flow_name = experience_id = None
    wc = obj.get("workflowContext")
    if type(wc) is dict:
        fc = wc.get("flowContext")
        if type(fc) is dict:
            flow_id, flow_name = _opt_str(fc.get("flowId")), _opt_str(fc.get("flowName"))
        ec = wc.get("experienceContext")
        if type(ec) is dict:
            experience_id = _opt_str(ec.get("experienceId"))
    return CanonicalEvent(ACTIVITY_SYNC, tenant, mid, lifecycle, ts_us,
                          flow_id=flow_id, flow_name=flow_name, experience_id=experience_id)


def _altcraft(obj: dict) -> Outcome:
    et = obj["event_type"]
    lifecycle = AC_LIFECYCLE.get(et) if type(et) is str else None
    if lifecycle is None and (type(et) is not str or not altcraft_non_lifecycle(et)):
        return Rejected("unknown_kind", "event_type is not a known Altcraft event type", ALTCRAFT)
    ts_us = parse_ts_us(obj.get("event_date"))
    if ts_us is None:
        return Rejected("schema", "event_date missing or not RFC 3339 with zone", ALTCRAFT, et)
    account = obj.get("account_id")
    ta = type(account)
    if ta is int:
        tenant = str(account)
    elif ta is str and account.isascii() and account.isdigit():
        # Same text as str(int(account)), without int(): that raises past 4300 digits.
        tenant = account.lstrip("0") or "0"
    else:
        return Rejected("schema", "account_id must be an integer", ALTCRAFT, et)
    is_test = obj.get("is_test")
    if is_test is not None and type(is_test) is not bool:
        return Rejected("schema", "is_test must be a boolean", ALTCRAFT, et)
    ed = obj.get("event_data")
    if ed is not None and type(ed) is not dict:
        return Rejected("schema", "event_data must be an object", ALTCRAFT, et)
    mid = None
    if lifecycle is not None and ed is not None:
        mid = ed.get("send_message_id")
        tm = type(mid)
        if tm is int:
            mid = str(mid)
        elif mid is not None and tm is not str:
            return Rejected("schema", "event_data.send_message_id must be a string", ALTCRAFT, et)
    if is_test:
        return Ignored(ALTCRAFT, et, "test_event")
    if lifecycle is None:
        alert = _campaign_error(tenant, ed or {}, ts_us) if et == "camp_error" else None
        return NonLifecycle(ALTCRAFT, et, tenant, ts_us, alert)
    if not mid or mid.isspace():
        return Rejected("missing_message_id", "event_data.send_message_id is missing or empty", ALTCRAFT, et)
    campaign = ed.get("campaign_id") if ed is not None else None
    return CanonicalEvent(ALTCRAFT, tenant, mid, lifecycle, ts_us,
                          campaign_id=None if campaign is None else _opt_str(campaign))


def _campaign_error(tenant: str, ed: dict, ts_us: int) -> dict:
    text = ed.get("error_text")
    return {
        "type": "campaign_error",
        "tenant": tenant,
        "campaign_id": _opt_str(ed.get("campaign_id")),
        "error_code": ed.get("error_code") if type(ed.get("error_code")) is int else _opt_str(ed.get("error_code")),
        "error_text": text[:_MAX_ERROR_TEXT] if type(text) is str else None,
        "event_ts_us": ts_us,
    }


def _opt_str(v: object) -> str | None:
    t = type(v)
    if t is str:
        return v[:256]  # type: ignore[index]
    if t is int:
        return str(v)
    return None


def _jtype(v: object) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(v), type(v).__name__)


def _json_error(exc: orjson.JSONDecodeError) -> str:
    # orjson messages name the problem and position, never echo the document.
    msg = str(exc).split(":", 1)[0]
    return f"not valid JSON: {msg}"[:_MAX_ERROR_TEXT]
