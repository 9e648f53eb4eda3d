"""Momentum (EMA) targets: ``target = m * target + (1 - m) * online``, shared by tasks.

MoCo (He et al. 2020, eq. 2) updates the key encoder's parameters this way; its buffers
(BN running statistics) are NOT copied: the key encoder keeps its own, as in MoCo's code.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


def momentum_copy(online: nn.Module) -> nn.Module:
    """A frozen deep copy of ``online`` to serve as its EMA target (no gradients)."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """In place: each parameter of ``target`` becomes ``m * target + (1 - m) * online``."""
    t_params, o_params = list(target.parameters()), list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError("ema_update: online and target modules have different parameters")
    torch._foreach_lerp_(t_params, [o.detach() for o in o_params], 1.0 - m)  # one fused update, no loop of kernels


def momentum_at(step: int, total_steps: int, base: float, schedule: str = "constant") -> float:
    """The EMA momentum for ``step``: ``constant`` (MoCo) or ``cosine`` from ``base`` to 1 (BYOL)."""
    if schedule == "constant" or total_steps <= 0:
        return base
    if schedule == "cosine":
        frac = min(max(step / total_steps, 0.0), 1.0)
        return 1.0 - (1.0 - base) * (math.cos(math.pi * frac) + 1.0) / 2.0
    raise ValueError(f"unknown momentum schedule {schedule!r}; use 'constant' or 'cosine'")
