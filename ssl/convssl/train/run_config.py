"""A pretraining run directory's ``config.yaml``: the fully resolved recipe plus a ``run``
section (data, world size, the plan's sizes, the budget's decision, the starting weights
and the versions), written by the main rank once the plan is decided."""

from __future__ import annotations

from pathlib import Path

import yaml

from convssl.checkpoint.versions import versions
from convssl.recipe import Recipe
from convssl.train.plan import Plan


def write_config(run_dir: Path, recipe: Recipe, data: str, info, plan: Plan, init: dict | None = None) -> None:
    doc = recipe.to_dict()
    doc["run"] = {"data": data, "world_size": info.world_size, "global_batch": plan.global_batch,
                  "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
                  "peak_lr": plan.peak_lr, "num_samples": plan.num_samples, **versions()}
    if plan.budget:
        doc["run"]["budget"] = plan.budget
    if init:  # the starting weights: source, file read, sha256
        doc["run"]["init"] = init
    (run_dir / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
