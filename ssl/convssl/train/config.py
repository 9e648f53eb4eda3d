"""The ``optim`` and ``train`` sections of a recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Optimizer and schedules. Batch-size free: lr = lr_per_256 * global_batch / 256.

    name: sgd (Nesterov optional), adamw, lars (You et al. 2017), lamb (You et al. 2020).
    weight_decay -> weight_decay_end: cosine schedule of weight decay (SparK: 0.04 -> 0.2);
        weight_decay_end None keeps it constant. Biases and norm parameters get none.
    warmup_epochs: linear warm-up from 0; then cosine to min_lr_ratio * peak.
    clip_grad: max global gradient norm (0 = off).
    """

    name: Literal["sgd", "adamw", "lars", "lamb"] = "sgd"
    lr_per_256: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 5e-4
    weight_decay_end: float | None = None
    lars_eta: float = 0.001
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    clip_grad: float = 0.0


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Loop settings.

    epochs / max_steps: max_steps (if > 0) wins; an epoch is num_samples // global batch steps.
    precision: auto = bf16 autocast on GPUs that support it, fp32 on CPU.
    sync_bn: convert BatchNorm to SyncBatchNorm under DDP on GPU (skipped for tasks that
        manage it themselves: SparK's sparse BN syncs visible positions, MoCo uses shuffle-BN).
    ckpt_every / log_every / image_every: in optimizer steps (0 = only at the end / never).
    keep_checkpoints: how many step checkpoints to keep (the newest).
    monitor_every: steps between online monitor checks (``pretrain --monitor SHARDS``; 0 = never).
    """

    epochs: float = 100.0
    max_steps: int = 0
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = True
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 20
    image_every: int = 0
    monitor_every: int = 100
