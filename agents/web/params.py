"""Query parameters of the views: numbers in range or a 400 that names the parameter (and
never repeats its value)."""
from __future__ import annotations

from typing import Mapping

MAX_DIGITS = 18  # any int below 10**18 fits JSON numbers and 64-bit encoders


class BadParam(ValueError):
    """A query parameter out of range or malformed; the text names it, not its value."""


def int_param(q: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    digits = raw[1:] if raw[:1] == "-" else raw
    if not (digits.isascii() and digits.isdigit() and len(digits) <= MAX_DIGITS) or not lo <= int(raw) <= hi:
        raise BadParam(f"query parameter {name!r} must be an integer from {lo} to {hi}")
    return int(raw)
