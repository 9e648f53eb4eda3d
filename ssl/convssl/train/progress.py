"""A live progress line: step, loss, images/s, share of time waiting for data, ETA."""

from __future__ import annotations

import sys
import time


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Redraws one line on a terminal; prints a line per update otherwise (logs, CI)."""

    def __init__(self, total_steps: int, start_step: int = 0, stream=None, enabled: bool = True):
        self.total, self.start = total_steps, start_step
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.note = ""  # a warning shown at the end of the line (the monitor's collapse check)

    def update(self, step: int, scalars: dict[str, float], img_per_s: float, data_share: float) -> None:
        if not self.enabled:
            return
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in scalars.items())
        line = (f"step {step}/{self.total}  {shown}  {img_per_s:,.0f} img/s  "
                f"data {100 * data_share:.0f}%  ETA {_hms(eta)}" + (f"  {self.note}" if self.note else ""))
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
