"""VICReg: invariance between two views' embeddings, with variance and covariance terms
that keep them from collapsing.

Bardes, Ponce, LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning". One network (encoder -> expander) on both views; the loss
(``convssl.losses.vicreg``): lambda x invariance (MSE) + mu x variance hinge + nu x
covariance, its variance and covariance over the global batch.

Design decisions:
- The global batch across ranks for variance and covariance (gathered with gradients, as
  the paper's ``FullGatherLayer``); the invariance term per rank (a per-sample mean).
- Views: ``crops`` (``convssl.views.multicrop``); with local crops the loss is the mean
  over the pairs (global view i, any later view j) (symmetric in its two views, so two
  crops give eq. 6 exactly). One photometric recipe for every view.
- Export: ``self.encoder`` (the representation before the expander, as the paper evaluates).

Legend: B per-rank batch, F encoder features, D embedding dim, V views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from convssl.errors import ConfigError
from convssl.losses.vicreg import vicreg_loss
from convssl.tasks.projected_views import ProjectedViews
from convssl.views.multicrop import MultiCropConfig, view_pairs
from convssl.views.photometric_config import ColorAugConfig


class VICReg(ProjectedViews):
    """VICReg pretext task: ``forward(batch) -> {"loss"}``."""

    task_name = "vicreg"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """VICReg hyper-parameters (the recipe's ``task:`` section); defaults from the paper (sec. 4.1).

        invariance, variance, covariance: lambda, mu, nu = 25, 25, 1.
        proj_hidden_dim, proj_out_dim, proj_layers: the expander, 8192-8192-8192 ("two fully-
            connected layers with batch normalization and ReLU, and a third linear layer").
        proj_batch_norm: BN in the hidden layers (the paper: yes).
        crops: global and local crops (``convssl.views.multicrop.MultiCropConfig``).
        augment_on, augment: as in SimCLR; defaults are BYOL's augmentations, which the paper
            follows (blur p 0.5, the mean of its two views' 1.0 and 0.1).
        """

        invariance: float = 25.0
        variance: float = 25.0
        covariance: float = 1.0
        proj_hidden_dim: int = 8192
        proj_out_dim: int = 8192
        proj_layers: int = 3
        proj_batch_norm: bool = True
        crops: MultiCropConfig = field(default_factory=MultiCropConfig)
        augment_on: Literal["device", "worker"] = "device"
        augment: ColorAugConfig = field(default_factory=lambda: ColorAugConfig(
            brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_p=0.5))

        def __post_init__(self):
            for name in ("invariance", "variance", "covariance"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
            if self.crops.views < 2:
                raise ValueError("vicreg needs two views at least (crops)")

    @staticmethod
    def check_batch(cfg: VICReg.Config, global_batch: int, world_size: int) -> None:
        """Variance and covariance are taken over the batch (unbiased): two samples at least."""
        if global_batch < 2:
            raise ConfigError(f"vicreg takes each dimension's variance over the batch: data.batch_size "
                              f"{global_batch} has none; use 2 or more (the paper: 2048)")

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        z = self.embed_views(batch)
        c = self.cfg
        pairs = view_pairs(c.crops)
        loss = sum(vicreg_loss(z[i], z[j], invariance=c.invariance, variance=c.variance,
                               covariance=c.covariance) for i, j in pairs) / len(pairs)
        return {"loss": loss}
