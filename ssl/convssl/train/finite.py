"""Non-finite steps are skipped and counted; the weights a checkpoint holds stay finite.

Checking the loss alone is not enough: a finite loss can have infinite gradients, and a
forward pass that produced NaNs has already written them into BatchNorm's running
statistics (or a MoCo queue) before any check. So each step is judged by its loss, its
gradient norm and the buffers its forward wrote; a step that fails is skipped whole: no optimizer update, no
``after_step``, and every buffer put back as it was before the forward. The data and
the schedule still move on by one step, as a skipped mixed-precision step does, so
the data position stays the step count. ``max_in_a_row`` failures in a row mean the
run has diverged: the trainer stops with a checkpoint of the last finite state. (An
update that overflows finite gradients into infinite weights cannot be undone without
a copy of the model each step; the trainer's checkpoint check catches it instead and
names the last good checkpoint.)
"""

from __future__ import annotations

import torch
import torch.nn as nn


class StepGuard:
    """Snapshot the buffers of ``task`` before each forward; restore them on a skip."""

    def __init__(self, task: nn.Module, max_in_a_row: int):
        self.buffers = [b for b in task.buffers() if b is not None]
        self._float_buffers = [b for b in self.buffers if b.is_floating_point()]
        self.max_in_a_row = max_in_a_row
        self.skipped = 0  # non-finite steps in this invocation
        self.in_a_row = 0
        self._saved: list[torch.Tensor] = []

    def before_forward(self) -> None:
        self._saved = [b.detach().clone() for b in self.buffers]

    @torch.no_grad()
    def skip(self) -> None:
        """Undo what the forward wrote into the buffers; count the step."""
        for buf, saved in zip(self.buffers, self._saved):
            buf.copy_(saved)
        self.skipped += 1
        self.in_a_row += 1

    def buffers_finite(self) -> torch.Tensor:
        """A bool tensor: every floating-point buffer (BN statistics, queues) is finite."""
        if not self._float_buffers:
            return torch.ones((), dtype=torch.bool)
        return torch.stack([torch.isfinite(b).all() for b in self._float_buffers]).all()

    def passed(self) -> None:
        self.in_a_row = 0

    @property
    def diverged(self) -> bool:
        return self.in_a_row >= self.max_in_a_row


def finite_step(loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """A bool tensor on the loss's device: both the loss and the gradient norm are finite."""
    return torch.isfinite(loss.detach().float()) & torch.isfinite(grad_norm.detach().float())
