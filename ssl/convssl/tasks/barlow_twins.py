"""Barlow Twins: the cross-correlation of two views' embeddings made close to the identity.

Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction".
One network (encoder -> projector) on both views, no momentum copy, no negatives; the loss
(``convssl.losses.barlow_twins``) standardizes each embedding dimension over the global
batch and penalizes the cross-correlation's distance to the identity, off-diagonal terms
weighted by lambda.

Design decisions:
- The global batch across ranks (embeddings all-gathered with gradients), as the paper's
  SyncBatchNorm + ``all_reduce(c)``.
- Views: ``crops`` (``convssl.views.multicrop``); with local crops the loss is the mean
  over the pairs (global view i, any later view j) (the loss is symmetric in its two
  views, so two crops give eq. 1 exactly). One photometric recipe for every view.
- Export: ``self.encoder`` (features before the projector, as the paper evaluates).

Legend: B per-rank batch, F encoder features, D embedding dim, V views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from convssl.errors import ConfigError
from convssl.losses.barlow_twins import barlow_twins_loss
from convssl.tasks.projected_views import ProjectedViews
from convssl.views.multicrop import MultiCropConfig, view_pairs
from convssl.views.photometric_config import ColorAugConfig


class BarlowTwins(ProjectedViews):
    """Barlow Twins pretext task: ``forward(batch) -> {"loss"}``."""

    task_name = "barlow_twins"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """Barlow Twins hyper-parameters (the recipe's ``task:`` section); defaults from the paper (sec. 4).

        lambd: weight of the redundancy (off-diagonal) term, 0.0051 ("lambda = 5 x 10^-3" and
            the public code's 0.0051).
        proj_hidden_dim, proj_out_dim, proj_layers: the projector, 8192-8192-8192 ("three linear
            layers, each with 8192 output units. The first two layers of the projector are
            followed by a batch normalization layer and rectified linear units").
        proj_batch_norm: BN in the hidden layers (the paper: yes).
        crops: global and local crops (``convssl.views.multicrop.MultiCropConfig``).
        augment_on, augment: as in SimCLR; defaults are BYOL's augmentations, which the paper
            follows (blur p 0.5, the mean of its two views' 1.0 and 0.1).
        """

        lambd: float = 0.0051
        proj_hidden_dim: int = 8192
        proj_out_dim: int = 8192
        proj_layers: int = 3
        proj_batch_norm: bool = True
        crops: MultiCropConfig = field(default_factory=MultiCropConfig)
        augment_on: Literal["device", "worker"] = "device"
        augment: ColorAugConfig = field(default_factory=lambda: ColorAugConfig(
            brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_p=0.5))

        def __post_init__(self):
            if self.lambd < 0:
                raise ValueError(f"lambd must be >= 0, got {self.lambd}")
            if self.crops.views < 2:
                raise ValueError("barlow_twins needs two views at least (crops)")

    @staticmethod
    def check_batch(cfg: BarlowTwins.Config, global_batch: int, world_size: int) -> None:
        """Each dimension is standardized over the batch: it needs two samples at least."""
        if global_batch < 2:
            raise ConfigError(f"barlow_twins standardizes each embedding dimension over the batch: "
                              f"data.batch_size {global_batch} has no spread; use 2 or more (the paper: 2048)")

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        z = self.embed_views(batch)
        pairs = view_pairs(self.cfg.crops)
        loss = sum(barlow_twins_loss(z[i], z[j], self.cfg.lambd) for i, j in pairs) / len(pairs)
        return {"loss": loss}
