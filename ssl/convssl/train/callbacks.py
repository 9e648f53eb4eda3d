"""What a command hands the training loop to run beside it: the online monitor during
pretraining (``convssl.eval.monitor``), the evaluation during fine-tuning
(``convssl.finetune``). The loop sits below evaluation, so it knows them only by this
protocol; the command builds them and passes them to ``pretrain(..., callbacks=...)``.
"""

from __future__ import annotations

from typing import Protocol

import torch.nn as nn


class Callback(Protocol):
    """Called by the loop on every rank after each step; a callback decides from the step
    whether it is due (``due``) and on which rank it works."""

    note: str | None  # a line for the progress bar ("" clears it; None leaves it)

    def on_step(self, step: int, total_steps: int, task: nn.Module) -> dict[str, float]:
        """After step ``step`` (steps done) of ``total_steps``: the scalars to log ({} for none)."""

    def on_end(self) -> dict:
        """Its entries for the run's summary ({} for none)."""


def due(step: int, every: int, total_steps: int) -> bool:
    """A periodic event: every ``every`` steps (0 = never), and once more at the run's last
    step (a 4-step run with ``monitor_every`` 100 would otherwise end without one)."""
    return bool(every) and (step % every == 0 or step == total_steps)
