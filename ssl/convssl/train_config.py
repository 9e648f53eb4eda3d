"""The ``optim`` and ``train`` sections of a recipe (below ``recipe`` and ``train``, which both read them)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from convssl.config import at_least, between
from convssl.errors import ConfigError
from convssl.short_budget import check as check_short_budget

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_FORMAT = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([smh])\s*$")


def parse_budget(text: str) -> float:
    """Seconds in ``text`` (``90s``, ``20m``, ``1.5h``); a ``ConfigError`` in one line otherwise."""
    found = _FORMAT.match(str(text))
    if not found or float(found.group(1)) <= 0:
        raise ConfigError(f"budget {text!r}: write a positive number and a unit, s, m or h (90s, 20m, 1.5h)")
    return float(found.group(1)) * _UNITS[found.group(2)]


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Optimizer and schedules. Batch-size free: lr = lr_per_256 * global_batch / 256.

    name: sgd (Nesterov optional), adamw, lars (You et al. 2017), lamb (You et al. 2020).
    weight_decay -> weight_decay_end: cosine schedule of weight decay (SparK: 0.04 -> 0.2);
        weight_decay_end None keeps it constant. Biases and norm parameters get none.
    warmup_epochs: linear warm-up from 0; then cosine to min_lr_ratio * peak.
    clip_grad: max global gradient norm (0 = off).
    short_budget: optimizer keys that replace these when ``--budget`` decides a run shorter
        than ``below_epochs`` epochs (``warmup_fraction``: warm-up as a fraction of that run);
        ``convssl.short_budget``. Empty = always these settings.
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
    short_budget: dict = field(default_factory=dict)

    def __post_init__(self):
        at_least("lr_per_256", self.lr_per_256, 0)
        between("momentum", self.momentum, 0, 1, high_open=True)
        for i, beta in enumerate(self.betas):
            between(f"betas[{i}]", beta, 0, 1, high_open=True)
        at_least("eps", self.eps, 0, strict=True)
        at_least("weight_decay", self.weight_decay, 0)
        if self.weight_decay_end is not None:
            at_least("weight_decay_end", self.weight_decay_end, 0)
        at_least("lars_eta", self.lars_eta, 0, strict=True)
        at_least("warmup_epochs", self.warmup_epochs, 0)
        between("min_lr_ratio", self.min_lr_ratio, 0, 1)
        at_least("clip_grad (0 = off)", self.clip_grad, 0)
        check_short_budget(self)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Loop settings.

    epochs / max_steps: max_steps (if > 0) wins; an epoch is num_samples // global batch steps.
    precision: auto = bf16 autocast on GPUs that support it, fp32 on CPU.
    sync_bn: convert BatchNorm to SyncBatchNorm under DDP on GPU (skipped for tasks that
        manage it themselves: SparK's sparse BN syncs visible positions, MoCo uses shuffle-BN).
    ckpt_every / log_every / image_every: in optimizer steps (0 = only at the end / never).
    keep_checkpoints: how many step checkpoints to keep (the newest).
    max_bad_steps: stop (with a checkpoint of the last finite state) after this many steps
        in a row whose loss or gradients were NaN or infinite; each such step is skipped.
    monitor_every: steps between online monitor checks (``pretrain --monitor SHARDS``; 0 = never).
    budget: wall-clock time for the run ("90s", "20m", "1.5h"; "" = off): its first steps are
        timed and max_steps decided from them (``convssl.train.budget``); a run's config.yaml
        records the decided max_steps beside the budget, and a decided max_steps is not timed again.
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
    max_bad_steps: int = 5
    monitor_every: int = 100
    budget: str = ""

    def __post_init__(self):
        at_least("epochs", self.epochs, 0)
        at_least("max_steps (0 = use epochs)", self.max_steps, 0)
        if not self.max_steps and not self.epochs > 0 and not self.budget:
            raise ValueError("give epochs > 0, max_steps > 0 or a budget: the run would have no steps")
        if self.budget:
            parse_budget(self.budget)
        for name in ("ckpt_every", "log_every", "image_every", "monitor_every"):
            at_least(f"{name} (0 = off)", getattr(self, name), 0)
        at_least("keep_checkpoints", self.keep_checkpoints, 1)
        at_least("max_bad_steps", self.max_bad_steps, 1)
