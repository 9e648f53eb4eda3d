"""Ctrl-C and SIGTERM stop training at a step boundary, with a checkpoint.

A signal handler that raises (Python's default for SIGINT) stops the process in the
middle of a step: BatchNorm statistics, a MoCo queue or a momentum encoder are then
half a step ahead of the weights, and the saved state is one no uninterrupted run ever
had. Here the handler only records the request; the loop finishes the step it is in,
saves, and stops, so a resumed run equals an uninterrupted one bit for bit. Further
signals while it does so (an impatient second Ctrl-C, a scheduler's repeated SIGTERM)
are reported and ignored, so they cannot cut the checkpoint write short: ``kill -9``
is the way to stop without one.

For the same reason torch's DataLoader SIGCHLD handler is set aside while the context
is active: it raises "DataLoader worker exited unexpectedly" from wherever the main
process happens to be (inside an optimizer step, say), so no consistent state could be
saved. With the default action, the loader notices the dead worker itself when the next
batch is due (its status check, within seconds), a clean point between two steps.
"""

from __future__ import annotations

import contextlib
import signal
import sys

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest(contextlib.AbstractContextManager):
    """``with StopRequest() as stop:``: SIGINT/SIGTERM set ``stop.signal`` instead of raising.

    Outside the main thread signals cannot be caught; the context then does nothing.
    """

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self):
        try:
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            if hasattr(signal, "SIGCHLD"):  # not SIG_IGN: that would reap children and break waitpid
                self._previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal = signum
            print(f"convssl: {name}: finishing this step, then saving a checkpoint", file=sys.stderr, flush=True)
        else:
            print(f"convssl: {name} again: still stopping, the checkpoint is being kept "
                  "(kill -9 stops without one)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        return False
