"""``TaskBase``: the optional members of the task contract, written once.

A task subclasses ``TaskBase`` and writes ``Config``, ``__init__``, ``loader_transform``
and ``forward``; it overrides a default below only where it does something else
(MoCo's momentum update in ``after_step``, SparK's reconstructions in ``pictures``).
The contract the registry checks stays ``convssl.tasks.PretextTask``: a class that
writes every member itself needs no base class.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class TaskBase(nn.Module):
    """Defaults: BatchNorm left to the trainer, nothing after a step, no pictures, and the
    task's ``self.encoder`` as the encoder checkpoints store and ``convssl export`` writes."""

    manages_batchnorm_sync = False

    def after_step(self, step: int, total_steps: int) -> None:
        """After each optimizer step (momentum encoders update here)."""

    def pictures(self, batch: dict) -> torch.Tensor | None:
        """An image grid ``[3, H, W]`` in 0..1 to save, or None."""
        return None

    def export_encoder(self):
        return self.encoder
