"""RFC 3339 / ISO-8601 timestamps to integer microseconds since the epoch (UTC).

Up to 9 fractional digits are accepted; digits past microseconds are truncated
(SPEC §5). A timestamp without ``Z`` or an offset is not an instant and is refused.
"""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

_RX = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))",
    re.ASCII,  # RFC 3339 digits are ASCII: without it \d also matches e.g. Arabic-Indic digits
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# Keep a day of margin inside datetime's range so window flooring and formatting never overflow.
_MIN_S = (date(1, 1, 2).toordinal() - _EPOCH_ORDINAL) * 86400
_MAX_S = (date(9999, 12, 30).toordinal() - _EPOCH_ORDINAL) * 86400
US_PER_S = 1_000_000
_EPOCH_DT = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_ts_us(value: object) -> int | None:
    """Return microseconds since 1970-01-01T00:00:00Z, or None if unparseable."""
    if type(value) is not str or len(value) > 40:
        return None
    m = _RX.fullmatch(value)
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    try:
        days = date(int(y), int(mo), int(d)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None
    hh, mm, ss = int(h), int(mi), int(s)
    if hh > 23 or mm > 59 or ss > 59:
        return None
    secs = days * 86400 + hh * 3600 + mm * 60 + ss
    if z is None:
        ohh, omm = int(oh), int(om)
        if ohh > 23 or omm > 59:
            return None
        off = ohh * 3600 + omm * 60
        secs = secs - off if sign == "+" else secs + off
    if not _MIN_S <= secs <= _MAX_S:
        return None
    us = int((frac + "00000")[:6]) if frac else 0
    return secs * US_PER_S + us


def format_ts_us(ts_us: int) -> str:
    """Format as RFC 3339 UTC with ``Z``; fraction only when non-zero, trailing zeros trimmed.

    Pure integer arithmetic (proleptic Gregorian calendar), so it never raises: a window
    start or deadline computed from an accepted timestamp may fall outside ``datetime``'s
    years 1..9999 (a large ``--window``, a long SLA); such years use ISO 8601's expanded
    form (``-0001``, ``+10000``) instead of crashing the report.
    """
    days, rem = divmod(ts_us, 86_400 * US_PER_S)
    secs, us = divmod(rem, US_PER_S)
    y, mo, d = _civil_from_days(days)
    year = f"{y:04d}" if 0 <= y <= 9999 else f"{y:+05d}"
    base = f"{year}-{mo:02d}-{d:02d}T{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
    if us:
        return f"{base}.{us:06d}".rstrip("0") + "Z"
    return base + "Z"


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """(year, month, day) of day ``z`` since 1970-01-01 (H. Hinnant's algorithm, any integer)."""
    z += 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


def to_datetime(ts_us: int) -> datetime:
    """A timezone-aware UTC datetime for an epoch-microsecond value."""
    return _EPOCH_DT + timedelta(microseconds=ts_us)


def from_datetime(dt: datetime) -> int:
    """Epoch microseconds of an aware datetime (naive datetimes are refused)."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime: all times are timezone-aware UTC")
    delta = dt - _EPOCH_DT
    return (delta.days * 86400 + delta.seconds) * US_PER_S + delta.microseconds
