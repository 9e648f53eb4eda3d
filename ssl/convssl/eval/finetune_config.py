"""The fine-tuning settings: one frozen dataclass, a YAML file as its serialisation.

Defaults follow SparK's ImageNet fine-tuning of convnets (Tian et al. 2023,
``downstream_imagenet/arg.py``: layer-wise lr decay 0.7, weight decay 0.02, warm-up
then cosine to 1e-3 x peak) scaled down to small data, with AdamW (Loshchilov & Hutter
2019) as for their ConvNeXts, and the standard augmentation of the linear-evaluation
and semi-supervised protocols: random resized crop and horizontal flip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from convssl.train.config import OptimConfig


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """How to fine-tune; every key can be set in a YAML file or with ``--set key=value``.

    label_fraction: share of the training labels used, class-balanced (1, 0.1, 0.01 ...).
    label_seed: seed of the subset choice (the same seed gives the same subset).
    epochs: passes over the labeled subset; max_steps (if > 0) wins.
    batch_size: GLOBAL batch (split over ranks); lr scales as lr_per_256 * batch / 256.
    workers, shuffle_buffer: loader workers per rank and samples in each shuffle buffer.
    scale, ratio, flip: the random resized crop (Szegedy et al. 2015) and flip.
    optimizer, lr_per_256, momentum, betas, weight_decay, clip_grad: the optimizer
        (biases and norm parameters get no weight decay).
    layer_decay: lr multiplier per stage going down from the head (1 = none).
    warmup: fraction of the steps spent in linear warm-up; then cosine to
        min_lr_ratio * peak.
    label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016).
    seed: initialisation of the head (and of the encoder for the random-init baseline)
        and the data order.
    precision: auto = bf16 autocast on GPUs that support it, fp32 on CPU.
    sync_bn: under DDP on GPU, BatchNorm becomes SyncBatchNorm (as SparK's fine-tuning).
    log_every, eval_every, ckpt_every: in steps (0 = only at the end).
    """

    label_fraction: float = 1.0
    label_seed: int = 0
    epochs: float = 30.0
    max_steps: int = 0
    batch_size: int = 256
    workers: int = 2
    shuffle_buffer: int = 1000
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    optimizer: Literal["sgd", "adamw", "lars", "lamb"] = "adamw"
    lr_per_256: float = 1e-3
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.02
    clip_grad: float = 0.0
    layer_decay: float = 0.7
    warmup: float = 0.05
    min_lr_ratio: float = 1e-3
    label_smoothing: float = 0.1
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    sync_bn: bool = True
    log_every: int = 20
    eval_every: int = 0
    ckpt_every: int = 500
    keep_checkpoints: int = 2

    def __post_init__(self):
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.batch_size < 1 or (self.epochs <= 0 and self.max_steps <= 0):
            raise ValueError("batch_size must be positive and epochs or max_steps set")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")

    def optim(self) -> OptimConfig:
        """The optimizer part as the trainer's ``OptimConfig`` (for ``optimizer_for_groups``)."""
        return OptimConfig(name=self.optimizer, lr_per_256=self.lr_per_256, momentum=self.momentum,
                           betas=self.betas, weight_decay=self.weight_decay, clip_grad=self.clip_grad,
                           min_lr_ratio=self.min_lr_ratio)


# Keys a resumed run may change (how often it logs and saves, how many workers); the rest must match.
RESUMABLE_CHANGES = frozenset({"log_every", "eval_every", "ckpt_every", "keep_checkpoints", "workers"})
