"""A run's sizes, derived once from the recipe, the data and the world size: the global
batch split over ranks, the steps (from ``train.max_steps``, ``train.epochs`` or a budget)
and the learning rate, scaled here and only here from ``optim.lr_per_256``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from convssl.errors import ConfigError
from convssl.recipe import Recipe, check_batch
from convssl.train.messages import warn


@dataclass
class Plan:
    """Sizes derived once from the recipe, the data and the world size."""

    global_batch: int
    per_rank_batch: int
    num_samples: int | None
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    budget: dict | None = None  # a train.budget's decision (convssl.train.budget): recorded, never re-timed


def make_plan(recipe: Recipe, manifest, world_size: int) -> Plan:
    """The plan of pretraining ``recipe`` on shards with ``manifest`` (None: no sample count)."""
    check_batch(recipe, world_size)
    g, n = recipe.data.batch_size, manifest.count if manifest is not None else None
    if n is not None and n < g:
        raise ConfigError(f"the data has {n} samples, fewer than one batch (data.batch_size={g}); "
                          "lower data.batch_size")
    return plan_run(g, n, recipe.train, recipe.optim, world_size)


def plan_run(global_batch: int, num_samples: int | None, train, optim, world_size: int) -> Plan:
    """The plan of ``num_samples`` samples at ``global_batch`` under the ``train`` and
    ``optim`` sections: an epoch is num_samples // global_batch steps (at least one)."""
    g = global_batch
    if g % world_size:
        raise ConfigError(f"data.batch_size {g} is not divisible by the {world_size} processes; "
                          f"use a multiple of {world_size}")
    n = num_samples
    steps_per_epoch = max(1, n // g) if n else 0
    if train.max_steps > 0:
        total = train.max_steps
    elif steps_per_epoch:
        total = max(1, math.ceil(train.epochs * steps_per_epoch))
    elif train.budget:
        total = 1  # a placeholder until the budget's timed steps decide (convssl.train.budget.fit)
    else:
        raise ConfigError("the shards have no manifest with a sample count: give train.max_steps (--max-steps)")
    spe = steps_per_epoch or total
    return Plan(global_batch=g, per_rank_batch=g // world_size, num_samples=n, steps_per_epoch=spe,
                total_steps=total, warmup_steps=round(optim.warmup_epochs * spe),
                peak_lr=optim.lr_per_256 * g / 256)


def warn_about_plan(optim, plan: Plan, info, command: str = "pretrain") -> None:
    """A warm-up longer than the run never reaches the peak learning rate: say so."""
    if plan.warmup_steps > plan.total_steps:
        reached = plan.total_steps / plan.warmup_steps
        warn(info, f"optim.warmup_epochs {optim.warmup_epochs:g} is {plan.warmup_steps} steps, longer "
             f"than the whole run ({plan.total_steps} steps): the learning rate never gets past "
             f"{reached:.0%} of its peak {plan.peak_lr:.3g}; shorten optim.warmup_epochs", command)
