"""Raw vendor record → canonical event, or a reason it can't be used (SPEC §1–§4, §7).

This is the hot path of both the worker and ``replay``, and the one definition of the vendor
shapes: it validates by hand, in the precedence order of SPEC §7, with the kind tables of
:mod:`streams.kinds`; it builds no pydantic model per event (measured: ``bench/bench_shapes.py``).
Extra fields are allowed everywhere (vendors add fields). ``tests/test_streams_normalize.py``
checks it against SPEC §7 transcribed, on every mutation of the vendors' seed samples.
Nothing here raises on bad input, and no error text contains an input value (PII).

``normalize`` gives a ``CanonicalEvent``; ``normalize_lite`` runs the very same checks but hands a
lifecycle event back as a plain tuple, for bulk consumers (replay) that need only its identity and
time. Timestamps take a cached fast path (``_ts``) that agrees with ``parse_ts_us`` exactly.
"""
from __future__ import annotations

import orjson

from .campaigns import activity_sync_campaign, altcraft_campaign, altcraft_campaign_name
from .events import CanonicalEvent, Ignored, NonLifecycle, Outcome, Rejected
from .kinds import (
    ACTIVITY_SYNC, ALTCRAFT, AC_LIFECYCLE, AS_DEPRECATED, AS_LIFECYCLE, AS_NON_LIFECYCLE, Kind,
    altcraft_non_lifecycle,
)
from .timeparse import US_PER_S, parse_ts_us

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
    obj = _decode(raw, max_event_bytes)
    if type(obj) is Rejected:
        return obj
    return normalize_obj(obj)


def _decode(raw: bytes | str, max_event_bytes: int) -> object:
    """The JSON value of a record, or ``Rejected`` (too_large, invalid_json)."""
    size = len(raw)
    if type(raw) is str and size <= max_event_bytes < 4 * size:
        size = len(raw.encode("utf-8", "surrogatepass"))  # the limit is in bytes, not characters
    if size > max_event_bytes:
        return Rejected("too_large", f"record of {size} bytes exceeds max_event_bytes={max_event_bytes}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejected("invalid_json", _json_error(exc))


def normalize_obj(obj: object) -> Outcome:
    """Classify an already-decoded JSON value."""
    out = _classify(obj)
    if type(out) is tuple:
        return _canonical(out, obj)  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


#: A lifecycle event as :func:`normalize_lite` returns it: ``(source, tenant, message_id, kind, ts_us,
#: campaign, campaign_name)``, the fields of :class:`CanonicalEvent` in order.
LiteEvent = tuple[str, str, str, Kind, int, "str | None", "str | None"]


def normalize_lite(raw: bytes | str, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Outcome | LiteEvent:
    """:func:`normalize` for bulk consumers (replay): same checks, same outcomes, except that a
    lifecycle event comes back as a plain ``LiteEvent`` tuple (the fields of a ``CanonicalEvent``)."""
    obj = _decode(raw, max_event_bytes)
    if type(obj) is Rejected:
        return obj
    if type(obj) is dict:  # _classify, inlined: one call less on the hot path
        if "event_type" in obj:
            return _altcraft(obj)
        if "kind" in obj and "tenantId" in obj:
            return _activity_sync(obj)
    return _classify(obj)


def _classify(obj: object) -> Outcome | LiteEvent:
    if type(obj) is not dict:
        return Rejected("not_an_object", f"top-level JSON value is {_jtype(obj)}, not an object")
    if "event_type" in obj:  # detect_source, inlined
        return _altcraft(obj)
    if "kind" in obj and "tenantId" in obj:
        return _activity_sync(obj)
    return Rejected("unknown_source", "object has neither event_type nor kind+tenantId")


def _canonical(ev: LiteEvent, obj: dict) -> CanonicalEvent:
    """The canonical event of a lite event (the same fields, as a named tuple)."""
    return _new_event(CanonicalEvent, ev)


_new_event = tuple.__new__  # CanonicalEvent(*ev) without the Python-level __new__ frame


# Timestamps: the vendors send `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (or an offset instead of Z). The
# minute prefix repeats from event to event, so it is validated once by parse_ts_us and cached; per
# event only the seconds, fraction and zone are checked, each by a table lookup where possible.
# Anything unusual (lowercase z, comma fractions, junk) goes to parse_ts_us itself.
_TS_MINUTES: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM" -> epoch seconds
_TS_MINUTES_MAX = 20_000
_TS_SECONDS = {f":{i:02d}": i for i in range(60)}  # validates and converts ":SS" in one lookup
_TS_OFFSETS = {f"{sign}{h:02d}:{m:02d}": (h * 3600 + m * 60) * (1 if sign == "+" else -1)
               for sign in "+-" for h in range(24) for m in range(60)}
_DIGITS = "0123456789"


def _ts(value: object) -> int | None:
    """``parse_ts_us(value)``, faster for the common forms (the tests check they agree)."""
    if type(value) is not str:
        return parse_ts_us(value)
    n = len(value)
    if value[-1:] == "Z":
        end, offset = n - 1, 0
    else:
        offset = _TS_OFFSETS.get(value[-6:])  # type: ignore[assignment]
        if offset is None:
            return parse_ts_us(value)
        end = n - 6
    base = _TS_MINUTES.get(value[:16])
    if base is not None:  # a cached, valid minute: only ":SS[.fraction]" before the zone is left
        sec = _TS_SECONDS.get(value[16:19])
        if sec is not None:
            if end == 19:
                return (base + sec - offset) * US_PER_S
            if 20 < end <= 29 and value[19] == ".":
                frac = value[20:end]  # 1..9 characters
                if not frac.strip(_DIGITS):  # ASCII digits only
                    return (base + sec - offset) * US_PER_S + int((frac + "00000")[:6])
        return parse_ts_us(value)
    ts = parse_ts_us(value)
    if ts is not None:
        minute = parse_ts_us(value[:16] + ":00Z")
        # Cache only minutes a day or more inside the accepted range: then no second and no offset
        # can leave it, and the fast path needs no range check.
        if (minute is not None and parse_ts_us(value[:16] + ":00+23:59") is not None
                and parse_ts_us(value[:16] + ":59.999999-23:59") is not None):
            if len(_TS_MINUTES) >= _TS_MINUTES_MAX:
                _TS_MINUTES.clear()
            _TS_MINUTES[value[:16]] = minute // US_PER_S
    return ts


def _activity_sync(obj: dict) -> Outcome | LiteEvent:
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
    ts_us = _ts(obj.get("timestamp"))
    if ts_us is None:
        return Rejected("schema", "timestamp missing or not RFC 3339 with zone", ACTIVITY_SYNC, kind)
    tenant = obj["tenantId"]
    if type(tenant) is not str or not tenant:
        return Rejected("schema", "tenantId must be a non-empty string", ACTIVITY_SYNC, kind)
    campaign, name = activity_sync_campaign(obj)
    if lifecycle is None:
        return NonLifecycle(ACTIVITY_SYNC, kind, tenant, ts_us, None, campaign, name)
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
    return (ACTIVITY_SYNC, tenant, mid, lifecycle, ts_us, campaign, name)


def _altcraft(obj: dict) -> Outcome | LiteEvent:
    et = obj["event_type"]
    lifecycle = AC_LIFECYCLE.get(et) if type(et) is str else None
    if lifecycle is None and (type(et) is not str or not altcraft_non_lifecycle(et)):
        return Rejected("unknown_kind", "event_type is not a known Altcraft event type", ALTCRAFT)
    ts_us = _ts(obj.get("event_date"))
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
        name = altcraft_campaign_name(et, ed)  # only campaign_launch names a campaign
        campaign = altcraft_campaign(ed) if name is not None else None
        return NonLifecycle(ALTCRAFT, et, tenant, ts_us, alert, campaign, name if campaign is not None else None)
    if not mid or mid.isspace():
        return Rejected("missing_message_id", "event_data.send_message_id is missing or empty", ALTCRAFT, et)
    return (ALTCRAFT, tenant, mid, lifecycle, ts_us, altcraft_campaign(ed), None)


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
