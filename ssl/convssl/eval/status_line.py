"""A one-line status for long evaluation passes: redrawn on a terminal, throttled lines otherwise."""

from __future__ import annotations

import sys
import time


class StatusLine:
    """``show(text)`` redraws one line on a terminal (at most every ``every`` seconds);
    on a pipe or log file it writes a line at most every ``log_every`` seconds."""

    def __init__(self, stream=None, *, enabled: bool = True, every: float = 0.5, log_every: float = 30.0):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every if self.tty else log_every
        self._last = -float("inf")
        self._drawn = False

    def show(self, text: str, *, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < self.every):
            return
        self._last = now
        self.stream.write(("\r\033[K" + text) if self.tty else text + "\n")
        self.stream.flush()
        self._drawn = self.tty

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def hms(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
