"""Parsing helpers of :mod:`agents.settings` (JSON values, SLA names, domain validators)."""
from __future__ import annotations

import json
from typing import Any, Callable

from streams.errors import ConfigError


def _decode_json(value: Any, field: str) -> Any:
    """Accept a JSON string for dict fields (env sources already decode JSON)."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{field} must be a JSON object: {exc}") from None
    return value


def _sla_name(name: Any) -> str:
    """Channel and stage names as configured: case-insensitive, like env variable names."""
    return str(name).strip().lower()


def _domain_check(check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a ``streams`` validator; its :class:`ConfigError` becomes the ValueError pydantic reports."""
    try:
        return check(*args, **kwargs)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
