"""``FUNNELWATCH_LOG_FORMAT=json``: one JSON object per log line, through faust's
``logging_config`` (merged over faust's default configuration).

Fields: ``timestamp`` (UTC, RFC 3339, milliseconds), ``level``, ``logger``, ``message``, and
``topic``/``partition``/``offset`` where the record carries them (``extra=``); an exception
adds ``exc_type`` and ``traceback``. Messages are the same as in text logs: no PII (SPEC §8).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import orjson

EXTRA_FIELDS = ("topic", "partition", "offset")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, timezone.utc)
        out: dict[str, Any] = {"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
                               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def logging_config(log_format: str) -> dict[str, Any] | None:
    """faust's ``logging_config`` for ``log_format`` (None: faust's own text lines)."""
    if log_format != "json":
        return None
    return {"version": 1, "merge": True,
            "formatters": {"json": {"()": "agents.logjson.JsonFormatter"}},
            "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json",
                                     "stream": "ext://sys.stdout"}}}
