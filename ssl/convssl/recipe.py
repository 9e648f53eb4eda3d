"""A recipe: the five typed sections of an experiment, loaded from YAML + overrides.

Every key is checked before anything runs: unknown keys and wrong types in any section
(the task's own section included) fail with the key path and the valid keys. The task
section is parsed once, into a ``TaskSpec`` (its name, class and typed Config).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from convssl.config import apply_overrides, did_you_mean, from_dict, load_yaml, set_keys, to_dict
from convssl.data.config import DataConfig
from convssl.encoders import EncoderConfig
from convssl.errors import ConfigError
from convssl.tasks.registry import TaskSpec
from convssl.train_config import OptimConfig, TrainConfig

SECTIONS = ("encoder", "data", "task", "optim", "train")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskSpec
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return to_dict(self)


def recipe_from_dict(raw: dict) -> Recipe:
    raw = dict(raw)
    encoder = dict(raw.get("encoder") or {})
    data = dict(raw.get("data") or {})
    encoder.setdefault("input_size", data.get("size", DataConfig().size))
    raw["encoder"] = encoder
    raw["task"] = raw.get("task") or {}  # no section: TaskSpec names what is missing
    recipe = from_dict(Recipe, raw)
    if recipe.encoder.input_size != recipe.data.size:
        raise ConfigError(
            f"encoder.input_size ({recipe.encoder.input_size}) differs from data.size "
            f"({recipe.data.size}); drop encoder.input_size or make them equal"
        )
    if recipe.encoder.in_chans != recipe.data.channels:
        raise ConfigError(
            f"encoder.in_chans ({recipe.encoder.in_chans}) differs from data.channels "
            f"({recipe.data.channels}); make them equal"
        )
    check_batch(recipe, world_size=1)
    return recipe


def check_batch(recipe: Recipe, world_size: int) -> None:
    """The global batch against the world size and the task's needs (a contrastive task's
    negatives), before anything is built. The trainer calls it again with its world size."""
    g = recipe.data.batch_size
    if g < world_size:
        raise ConfigError(f"data.batch_size {g} is the global batch, smaller than the {world_size} processes: "
                          f"each needs at least one sample; use a multiple of {world_size}")
    check = getattr(recipe.task.cls, "check_batch", None)  # optional: tasks with batch-size needs
    if check is not None:
        check(recipe.task.config, g, world_size)


def load_recipe(path: str | Path, overrides: Mapping | list[str] | tuple[str, ...] = ()) -> Recipe:
    """The recipe at ``path`` with ``overrides``: ``key=value`` strings (``--set``, values
    parsed as YAML) or a mapping of dotted keys to values (``{"optim.lr_per_256": 0.1}``)."""
    raw = load_yaml(path)
    raw = set_keys(raw, overrides) if isinstance(overrides, Mapping) else apply_overrides(raw, overrides)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown recipe section(s) {', '.join(k + did_you_mean(k, SECTIONS) for k in unknown)}; "
                          f"sections are {', '.join(SECTIONS)}")
    return recipe_from_dict(raw)

