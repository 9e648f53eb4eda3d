"""Rotation prediction (Gidaris, Singh, Komodakis, ICLR 2018).

Every image appears in all four rotations in the same batch ("we found it beneficial to
feed all four rotated copies of an image simultaneously", sec. 2.2); label k is
``torch.rot90(x, k, (2, 3))``, i.e. k x 90 degrees counter-clockwise. A 4-way head on
the pooled last-stage feature; cross-entropy. Random resized crop and flip happen in
the loader before rotating; no colour augmentation (as in the paper's code).

Legend: B images, 4B rotated inputs, C channels, H = W size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from convssl.views.normalize import normalize
from convssl.views.crop_views import crop_views
from convssl.heads.classifier import classifier_head
from convssl.losses.classification import cross_entropy_with_accuracy
from convssl.tasks.base import TaskBase


def rotate_all(x_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations, grouped by k: returns ``x_4BCHW`` and labels ``y_4B``."""
    if x_BCHW.shape[-1] != x_BCHW.shape[-2]:
        raise ValueError(f"rotation needs square inputs, got {tuple(x_BCHW.shape[-2:])}")
    rotated = torch.cat([torch.rot90(x_BCHW, k, (2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x_BCHW.device).repeat_interleave(x_BCHW.shape[0])
    return rotated, labels


class RotationPrediction(TaskBase):
    """Predict which of 0/90/180/270 degrees an image was rotated by."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """head: 'linear' or 'mlp' on the pooled feature; hidden: the MLP's width."""

        head: Literal["linear", "mlp"] = "mlp"
        hidden: int = 512

    def __init__(self, encoder, cfg: RotationPrediction.Config, data):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.data = data
        self.mean, self.std = data.mean, data.std
        self.head = classifier_head(encoder.feature_dim, 4, cfg.head, cfg.hidden)

    def loader_transform(self):
        return crop_views(self.data)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        x_BCHW = normalize(batch["img"][0], self.mean, self.std)
        x_4BCHW, y_4B = rotate_all(x_BCHW)
        logits = self.head(self.encoder.pool(x_4BCHW))
        return cross_entropy_with_accuracy(logits, y_4B)
