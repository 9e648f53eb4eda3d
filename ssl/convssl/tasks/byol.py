"""BYOL: an online network predicts the projection of a momentum (EMA) target network.

Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning".
The online network is encoder -> projector -> predictor; the target network is an EMA
copy of encoder -> projector that runs without gradients. Each view predicts the target
of the other (eq. 3, ``L + L~``; with multi-crop every view predicts every other global
view's target: ``convssl.losses.byol``).

Design decisions:
- EMA after each optimizer step (``after_step``), as MoCo here: a checkpoint after step t
  holds the target of step t, so resume is exact. The momentum follows the paper's
  schedule over the whole run, ``tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2``
  (sec. 3.3, ``convssl.momentum.momentum_at`` with ``cosine``). The target keeps its own
  BatchNorm statistics (only parameters are averaged), as in the paper's code.
- Views: ``crops`` (``convssl.views.multicrop``): 2 global crops by default; local
  crops are predicted too, but only global crops make targets. One photometric recipe for
  every view (the paper's asymmetric blur/solarize probabilities are not modelled).
- Export: ``self.encoder``, the online encoder, as the paper evaluates.

Legend: B per-rank batch, F encoder features, D projection dim, V views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from convssl.data.config import DataConfig
from convssl.encoders import Encoder
from convssl.errors import ConfigError
from convssl.heads.projection import projection_head
from convssl.losses.byol import byol_loss
from convssl.momentum import ema_update, momentum_at, momentum_copy
from convssl.tasks.base import TaskBase
from convssl.views.multicrop import MultiCropConfig, check_crop_sizes, encode_by_resolution, multi_crop
from convssl.views.photometric_config import ColorAugConfig
from convssl.views.view_augment import ViewAugment


class BYOL(TaskBase):
    """BYOL pretext task: ``forward(batch) -> {"loss", "momentum"}``; ``after_step`` moves the target."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """BYOL hyper-parameters (the recipe's ``task:`` section); defaults from the paper (sec. 3.3, App. J).

        momentum: tau_base, 0.996 (the paper, batch 4096).
        momentum_schedule: ``cosine`` (tau_base -> 1 over the run, the paper) or ``constant``.
        proj_hidden_dim, proj_out_dim: projector 4096 -> 256 ("a linear layer with output size
            4096 followed by batch normalization, rectified linear units, and a final linear
            layer with output dimension 256").
        pred_hidden_dim: the predictor has the projector's shape, 256 -> 4096 -> 256.
        proj_batch_norm: BN in the hidden layer of projector and predictor (the paper: yes).
        crops: global and local crops (``convssl.views.multicrop.MultiCropConfig``).
        augment_on, augment: as in SimCLR; defaults are BYOL's colour jitter (0.4, 0.4, 0.2,
            0.1) p 0.8, grayscale 0.2, blur p 0.5 (the mean of its two views' 1.0 and 0.1).
        """

        momentum: float = 0.996
        momentum_schedule: Literal["constant", "cosine"] = "cosine"
        proj_hidden_dim: int = 4096
        proj_out_dim: int = 256
        pred_hidden_dim: int = 4096
        proj_batch_norm: bool = True
        crops: MultiCropConfig = field(default_factory=MultiCropConfig)
        augment_on: Literal["device", "worker"] = "device"
        augment: ColorAugConfig = field(default_factory=lambda: ColorAugConfig(
            brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_p=0.5))

        def __post_init__(self):
            if not 0.0 <= self.momentum <= 1.0:
                raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
            if self.crops.global_crops + self.crops.local_crops < 2:
                raise ValueError("byol needs two views at least: each view predicts another's target")

    def __init__(self, encoder: Encoder, cfg: BYOL.Config, data: DataConfig):
        super().__init__()
        self.cfg, self.data = cfg, data
        check_crop_sizes(cfg.crops, encoder.reductions[-1], "byol")
        self.views = ViewAugment(cfg.augment, cfg.augment_on, data)
        self.encoder = encoder
        self.projector = projection_head(encoder.feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim,
                                         num_layers=2, batch_norm=cfg.proj_batch_norm)
        self.predictor = projection_head(cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim,
                                         num_layers=2, batch_norm=cfg.proj_batch_norm)
        self.encoder_momentum = momentum_copy(self.encoder)
        self.projector_momentum = momentum_copy(self.projector)
        self.register_buffer("momentum_now", torch.tensor(float(cfg.momentum)), persistent=False)

    def loader_transform(self):
        """The ``crops`` (2 global by default); with ``augment_on: worker`` also the photometric part."""
        return multi_crop(self.data, self.cfg.crops, augment=self.views.worker_transform())

    def _online(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.encoder.pool(x_BCHW)))

    def _target(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.projector_momentum(self.encoder_momentum.pool(x_BCHW))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        views = batch["img"]
        if not isinstance(views, (list, tuple)) or len(views) != self.cfg.crops.views:
            raise ConfigError(f"byol expects batch['img'] to be a list of {self.cfg.crops.views} views "
                              "(loader_transform)")
        xs = [self.views.prepare(v) for v in views]
        predictions = encode_by_resolution(self._online, xs)
        with torch.no_grad():
            targets = encode_by_resolution(self._target, xs[:self.cfg.crops.global_crops])
        return {"loss": byol_loss(predictions, targets), "momentum": self.momentum_now.clone()}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA of the online encoder and projector into the target (after the optimizer step)."""
        m = momentum_at(step, total_steps, self.cfg.momentum, self.cfg.momentum_schedule)
        self.momentum_now.fill_(m)
        ema_update(self.encoder, self.encoder_momentum, m)
        ema_update(self.projector, self.projector_momentum, m)
