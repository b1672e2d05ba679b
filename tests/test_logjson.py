"""FUNNELWATCH_LOG_FORMAT=json (agents/logjson.py): one JSON object per record, no broker."""
from __future__ import annotations

import json
import logging
import sys

from agents.logjson import JsonFormatter, logging_config


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("funnelwatch", logging.WARNING, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    rec.created = 1_724_763_600.1234
    return rec


def test_one_object_per_line_with_fields() -> None:
    line = JsonFormatter().format(record("%s/%d: re-reading", "events", 3, topic="events", partition=3, offset=17))
    assert "\n" not in line
    assert json.loads(line) == {"timestamp": "2024-08-27T13:00:00.123Z", "level": "WARNING", "logger": "funnelwatch",
                                "message": "events/3: re-reading", "topic": "events", "partition": 3, "offset": 17}


def test_exception_is_kept_on_one_line() -> None:
    line = JsonFormatter().format(record("failed", exc=True))
    obj = json.loads(line)
    assert "\n" not in line and obj["exc_type"] == "ValueError" and "boom" in obj["traceback"]


def test_config() -> None:
    assert logging_config("text") is None
    cfg = logging_config("json")
    assert cfg["merge"] and cfg["handlers"]["default"]["formatter"] == "json"
