"""A fine-tuning recipe: the sections of a pretraining recipe, in the same dialect.

``optim`` and ``train`` are pretraining's own sections (``OptimConfig``, ``TrainConfig``:
warm-up in epochs, the step count from ``train.max_steps`` or ``train.epochs``); ``data``
is the labeled subset and its loader, ``task`` the classifier's settings, ``eval`` how
often the validation shards are scored during the run. The encoder, its input size and
normalisation come from the pretraining checkpoint.

Defaults follow SparK's ImageNet fine-tuning of convnets (Tian et al. 2023,
``downstream_imagenet/arg.py``: layer-wise lr decay 0.7, weight decay 0.02, warm-up then
cosine to 1e-3 x peak) scaled down to small data, with AdamW (Loshchilov & Hutter 2019)
as for their ConvNeXts, and the standard augmentation of the linear-evaluation and
semi-supervised protocols: random resized crop and horizontal flip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from convssl.config import apply_overrides, at_least, from_dict, load_yaml, set_keys
from convssl.train_config import OptimConfig, TrainConfig


@dataclass(frozen=True, kw_only=True)
class LabeledDataConfig:
    """The labeled subset and how it is read.

    label_fraction: share of the training labels used, class-balanced (1, 0.1, 0.01 ...).
    label_seed: seed of the subset choice (the same seed gives the same subset).
    batch_size: GLOBAL batch (split over ranks); lr scales as lr_per_256 * batch / 256.
    workers, shuffle_buffer: loader workers per rank and samples in each shuffle buffer.
    scale, ratio, flip: the random resized crop (Szegedy et al. 2015) and flip.
    max_corrupt_fraction: stop with an error when more samples than this are unreadable.
    """

    label_fraction: float = 1.0
    label_seed: int = 0
    batch_size: int = 256
    workers: int = 2
    shuffle_buffer: int = 1000
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    max_corrupt_fraction: float = 0.01

    def __post_init__(self):
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        at_least("batch_size (the global batch)", self.batch_size, 1)
        at_least("workers (0 = load in the main process)", self.workers, 0)
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """The classifier task: a fresh linear head on the encoder's pooled last stage.

    layer_decay: lr multiplier per stage going down from the head (1 = none).
    label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016).
    """

    layer_decay: float = 0.7
    label_smoothing: float = 0.1

    def __post_init__(self):
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """every: steps between scores on the validation shards (0 = only at the end)."""

    every: int = 0


# The fine-tuning defaults where they differ from pretraining's sections: 30 epochs with a
# warm-up of 5% of them, AdamW at SparK's weight decay, a checkpoint every 500 steps.
DEFAULTS = {
    "optim": {"name": "adamw", "lr_per_256": 1e-3, "weight_decay": 0.02, "warmup_epochs": 1.5, "min_lr_ratio": 1e-3},
    "train": {"epochs": 30.0, "ckpt_every": 500, "keep_checkpoints": 2},
}


@dataclass(frozen=True, kw_only=True)
class FinetuneRecipe:
    """How to fine-tune; every key can be set in a YAML file or with ``--set section.key=value``.
    ``train.seed`` initialises the head (and the encoder of the random-init baseline) and
    orders the data; ``train.sync_bn``: under DDP on GPU, BatchNorm becomes SyncBatchNorm
    (as SparK's fine-tuning)."""

    data: LabeledDataConfig = field(default_factory=LabeledDataConfig)
    task: ClassifierConfig = field(default_factory=ClassifierConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(**DEFAULTS["optim"]))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**DEFAULTS["train"]))
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.train.budget:
            raise ValueError("train.budget: fine-tuning runs train.max_steps or train.epochs; no budget")


def finetune_recipe(raw: Mapping | None = None) -> FinetuneRecipe:
    """A ``FinetuneRecipe`` from nested sections, on top of the fine-tuning defaults."""
    merged = {name: dict(DEFAULTS.get(name, {})) for name in ("data", "task", "optim", "train", "eval")}
    for name, section in (raw or {}).items():
        if isinstance(section, Mapping) and name in merged:
            merged[name].update(section)
        else:
            merged[name] = section
    return from_dict(FinetuneRecipe, merged, path="finetune")


def load_finetune_recipe(path: str | Path | None,
                         overrides: Mapping | list[str] | tuple[str, ...] = ()) -> FinetuneRecipe:
    """The recipe at ``path`` (None: the defaults) with ``overrides`` (``section.key=value``
    strings as ``--set`` takes them, or a mapping of dotted keys to values)."""
    raw = load_yaml(path) if path else {}
    raw = set_keys(raw, overrides) if isinstance(overrides, Mapping) else apply_overrides(raw, overrides)
    return finetune_recipe(raw)


# Keys a resumed run may change (how often it logs, scores and saves, how many workers); the rest must match.
RESUMABLE_CHANGES = frozenset({"train.log_every", "eval.every", "train.ckpt_every", "train.keep_checkpoints",
                               "data.workers", "train.max_bad_steps"})
