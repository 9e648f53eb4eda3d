"""A linear or MLP classifier head on a pooled feature."""

from __future__ import annotations

import torch.nn as nn


def classifier_head(in_dim: int, num_classes: int, kind: str = "linear", hidden: int = 512) -> nn.Module:
    """``linear``: one Linear. ``mlp``: Linear-BN-ReLU-Linear (Gidaris et al. 2018 use
    non-linear heads on top of conv blocks)."""
    if kind == "linear":
        return nn.Linear(in_dim, num_classes)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
    raise ValueError(f"head must be 'linear' or 'mlp', got {kind!r}")
