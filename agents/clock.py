"""The wiring's wall clock.

``streams`` never reads the time: the agents read it here and pass ``now_us`` in.
"""

from __future__ import annotations

import time

__all__ = ["now_us"]


def now_us() -> int:
    """Wall-clock time as integer microseconds since the Unix epoch."""
    return time.time_ns() // 1000
