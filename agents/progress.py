"""A progress line on stderr for long CLI runs (``replay`` of a large file, ``generate
--produce``): count, rate and ETA, redrawn at most every ``interval_s``. Only when the
stream is a terminal: piped or redirected output is left exactly as it was."""
from __future__ import annotations

import sys
import time
from typing import IO, Callable, Iterator


def _eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """``advance(n, size)``: ``n`` more items done, ``size`` more units of ``total`` (e.g. bytes)."""

    DEFAULT_INTERVAL_S = 0.2

    def __init__(self, label: str, total: float | None = None, unit: str = "lines", stream: IO[str] | None = None,
                 interval_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.label, self.total, self.unit = label, total, unit
        self.interval_s = self.DEFAULT_INTERVAL_S if interval_s is None else interval_s
        self.clock = clock
        self.items = 0
        self.done = 0.0
        self.start = self._last = clock()

    def advance(self, n: int = 1, size: float | None = None) -> None:
        self.items += n
        self.done += n if size is None else size
        now = self.clock()
        if self.enabled and now - self._last >= self.interval_s:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        line = f"{self.label}: {self.items:,} {self.unit}, {self.items / elapsed:,.0f} {self.unit}/s"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            eta = elapsed * (1 - frac) / frac if frac > 0 else 0.0
            line += f", {frac:.0%}, ETA {_eta(eta)}"
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(self.clock())
            self.stream.write("\n")
            self.stream.flush()


def lines_with_progress(stream: IO[bytes], progress: Progress) -> Iterator[bytes]:
    """The lines of ``stream``, advancing ``progress`` by each line's bytes."""
    for line in stream:
        progress.advance(1, len(line))
        yield line

