"""DINO with a convnet backbone: a student matches a momentum teacher's centred, sharpened
softmax over K prototypes, across multi-crop views.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (the
ResNet-50 runs of its Table 2 and public code). Student = encoder -> ``DINOHead``; the
teacher is an EMA copy of both that sees only the global crops; the student sees every
crop (``convssl.views.multicrop``), each resolution group in one encoder pass. The loss,
centre and temperature schedule: ``convssl.losses.dino``.

Design decisions:
- Teacher EMA after each optimizer step (``after_step``), momentum 0.996 -> 1 on a cosine
  over the whole run (the paper's schedule, ``convssl.momentum.momentum_at``); the
  teacher keeps its own BatchNorm statistics.
- The centre is a buffer (``center``), updated in ``forward`` after the loss with the batch
  mean all-reduced over ranks; the teacher temperature of the next step is a buffer too
  (``teacher_temp_now``, set by ``after_step``), so a checkpoint resumes both exactly. The
  warm-up is a fraction of the run (the task sees steps, not epochs).
- Not modelled: freezing the prototypes during the first epoch (``freeze_last_layer``) and
  the paper's per-view asymmetric blur/solarize probabilities.
- Export: ``self.encoder``, the student's encoder (the paper evaluates the teacher, which
  tracks it closely; ``encoder_momentum`` holds it).

Legend: B per-rank batch, F encoder features, K prototypes, V views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from convssl.data.config import DataConfig
from convssl.encoders import Encoder
from convssl.errors import ConfigError
from convssl.heads.dino import DINOHead
from convssl.losses.dino import dino_loss, teacher_probabilities, teacher_temperature_at, updated_center
from convssl.momentum import ema_update, momentum_at, momentum_copy
from convssl.tasks.base import TaskBase
from convssl.views.multicrop import MultiCropConfig, check_crop_sizes, encode_by_resolution, multi_crop
from convssl.views.photometric_config import ColorAugConfig
from convssl.views.view_augment import ViewAugment


class DINO(TaskBase):
    """DINO pretext task: ``forward(batch) -> {"loss", "teacher_temp", "momentum"}``."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """DINO hyper-parameters (the recipe's ``task:`` section); defaults from the paper and its code.

        out_dim: K prototypes, 65536.
        hidden_dim, bottleneck_dim, head_layers, head_batch_norm: the head, a 3-layer MLP
            (2048 hidden, GELU, no BN) to a 256-d bottleneck, L2-normalized, then K prototypes.
        student_temp: tau_s 0.1.
        warmup_teacher_temp, teacher_temp, teacher_temp_warmup: tau_t rises linearly from the
            first to the second over this fraction of the run (the paper: 0.04 -> 0.07 over 30
            of 100 epochs; its ResNet-50 command keeps 0.04 throughout).
        center_momentum: m of the centre's EMA, 0.9.
        momentum, momentum_schedule: the teacher's EMA, 0.996 -> 1 (cosine).
        crops: 2 global and 6 local 96 px crops here (the paper's ResNet-50 run; its default is 8).
        augment_on, augment: as in SimCLR; defaults are BYOL's augmentations, which DINO follows.
        """

        out_dim: int = 65536
        hidden_dim: int = 2048
        bottleneck_dim: int = 256
        head_layers: int = 3
        head_batch_norm: bool = False
        student_temp: float = 0.1
        warmup_teacher_temp: float = 0.04
        teacher_temp: float = 0.07
        teacher_temp_warmup: float = 0.3
        center_momentum: float = 0.9
        momentum: float = 0.996
        momentum_schedule: Literal["constant", "cosine"] = "cosine"
        crops: MultiCropConfig = field(default_factory=lambda: MultiCropConfig(local_crops=6))
        augment_on: Literal["device", "worker"] = "device"
        augment: ColorAugConfig = field(default_factory=lambda: ColorAugConfig(
            brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_p=0.5))

        def __post_init__(self):
            for name in ("student_temp", "warmup_teacher_temp", "teacher_temp"):
                if getattr(self, name) <= 0:
                    raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
            for name in ("teacher_temp_warmup", "center_momentum", "momentum"):
                if not 0.0 <= getattr(self, name) <= 1.0:
                    raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
            if self.crops.views < 2:
                raise ValueError("dino needs two views at least: the student learns from a view other "
                                 "than the teacher's")

    def __init__(self, encoder: Encoder, cfg: DINO.Config, data: DataConfig):
        super().__init__()
        self.cfg, self.data = cfg, data
        check_crop_sizes(cfg.crops, encoder.reductions[-1], "dino")
        self.views = ViewAugment(cfg.augment, cfg.augment_on, data)
        self.encoder = encoder
        self.head = DINOHead(encoder.feature_dim, cfg.out_dim, hidden_dim=cfg.hidden_dim,
                             bottleneck_dim=cfg.bottleneck_dim, layers=cfg.head_layers,
                             batch_norm=cfg.head_batch_norm)
        self.encoder_momentum = momentum_copy(self.encoder)
        self.head_momentum = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        first_temp = teacher_temperature_at(0, 1, cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.teacher_temp_warmup)
        self.register_buffer("teacher_temp_now", torch.tensor(float(first_temp)))
        self.register_buffer("momentum_now", torch.tensor(float(cfg.momentum)), persistent=False)
        # host mirror, so a step reads no device scalar (restored from the buffer on load)
        self._teacher_temp = first_temp
        self.register_load_state_dict_post_hook(_mirror_teacher_temp)

    def loader_transform(self):
        """The ``crops`` (global first, then local); with ``augment_on: worker`` also the photometric part."""
        return multi_crop(self.data, self.cfg.crops, augment=self.views.worker_transform())

    def _student(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.pool(x_BCHW))

    def _teacher(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.head_momentum(self.encoder_momentum.pool(x_BCHW))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        views = batch["img"]
        if not isinstance(views, (list, tuple)) or len(views) != self.cfg.crops.views:
            raise ConfigError(f"dino expects batch['img'] to be a list of {self.cfg.crops.views} views "
                              "(loader_transform)")
        xs = [self.views.prepare(v) for v in views]
        with torch.no_grad():
            teacher = encode_by_resolution(self._teacher, xs[:self.cfg.crops.global_crops])
        student = encode_by_resolution(self._student, xs)
        probs = teacher_probabilities(teacher, self.center, self._teacher_temp)
        loss = dino_loss(probs, student, self.cfg.student_temp)
        if self.training:
            self.center.copy_(updated_center(self.center, teacher, self.cfg.center_momentum))
        return {"loss": loss, "teacher_temp": self.teacher_temp_now.clone(), "momentum": self.momentum_now.clone()}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Teacher EMA (after the optimizer step) and the teacher temperature of the next step."""
        c = self.cfg
        m = momentum_at(step, total_steps, c.momentum, c.momentum_schedule)
        self.momentum_now.fill_(m)
        ema_update(self.encoder, self.encoder_momentum, m)
        ema_update(self.head, self.head_momentum, m)
        self._teacher_temp = teacher_temperature_at(step + 1, total_steps, c.warmup_teacher_temp,
                                                    c.teacher_temp, c.teacher_temp_warmup)
        self.teacher_temp_now.fill_(self._teacher_temp)


def _mirror_teacher_temp(module: DINO, incompatible_keys) -> None:
    """After ``load_state_dict``: the host temperature follows the loaded buffer (one read at load)."""
    module._teacher_temp = float(module.teacher_temp_now)
