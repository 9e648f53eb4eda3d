"""Every periodic event of a run, for every registered task, with each task's own small recipe.

A long run meets its log, checkpoint, picture and monitor steps and a resume; a short test
that runs only the first step never does (SparK's picture step under the ``auto`` backend
crashed every shipped SparK recipe at step ``image_every``). Each small recipe in
``recipes/`` runs here with its own task settings and sparse backend, every period at 3
steps, stopped after 2 steps as a preempted job is, then resumed to its end (step 4, where
every event fires once more). The test grows
with the registry: a task without a small recipe fails ``test_every_task_has_a_small_recipe``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convssl.config import load_yaml
from convssl.recipe import load_recipe
from convssl.tasks.registry import TASKS
from convssl import checkpoint as ckpt_io
from convssl import pretrain  # the public API: monitor=SHARDS is its online monitor callback

ROOT = Path(__file__).resolve().parents[1]
UNLABELED = str(ROOT / "data" / "fmnist" / "unlabeled")
SMALL_RECIPES = sorted(p for p in (ROOT / "recipes").glob("*_small.yaml") if not p.name.startswith("finetune_"))
STEPS, EVERY, STOP = 4, 3, 2  # stopped at 2, periodic at 3, the end (4) fires everything once more


def _task_names(path: Path) -> set[str]:
    task = load_yaml(path)["task"]
    return {task["name"], *(sub["name"] for sub in task.get("tasks", []))}


def test_every_task_has_a_small_recipe():
    covered = {load_yaml(p)["task"]["name"] for p in SMALL_RECIPES}
    assert set(TASKS) <= covered, f"tasks without a recipes/*_small.yaml: {sorted(set(TASKS) - covered)}"


@pytest.fixture(scope="module")
def monitor_shards(tmp_path_factory) -> str:
    from test_compare import small_labeled

    return small_labeled(tmp_path_factory.mktemp("monitor"), "train", 60)


def _recipe(path: Path):
    return load_recipe(path, {"train.max_steps": STEPS, "train.log_every": 1, "train.ckpt_every": EVERY,
                              "train.image_every": EVERY, "train.monitor_every": EVERY,
                              "train.keep_checkpoints": 10, "data.batch_size": 16, "data.workers": 1})


@pytest.mark.parametrize("path", SMALL_RECIPES, ids=lambda p: p.stem)
def test_periodic_events_and_a_resume_with_the_recipes_own_settings(path, monitor_shards, tmp_path):
    run = tmp_path / "run"
    recipe = _recipe(path)
    first = pretrain(recipe, UNLABELED, run, progress=False, stop_after=STOP, monitor=monitor_shards, device="cpu")
    assert first["steps"] == STOP
    second = pretrain(recipe, UNLABELED, run, resume=True, progress=False, monitor=monitor_shards, device="cpu")
    assert second["steps"] == STEPS

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [line["step"] for line in lines if "loss" in line]
    assert logged == list(range(1, STEPS + 1)), logged  # log_every 1 across the stop and the resume
    assert all(line["loss"] == line["loss"] for line in lines if "loss" in line), "a NaN loss was logged"
    monitored = [line["step"] for line in lines if "monitor/knn_top1" in line]
    assert monitored == [3, 4], monitored  # every 3 steps, and once at the end of the run
    saved = sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.pt"))
    assert saved == [2, 3, 4], saved  # the stop, ckpt_every, the end
    assert ckpt_io.load(run)["step"] == STEPS

    pictured = sorted(int(p.stem.split("-")[1]) for p in (run / "images").glob("step-*.png")) \
        if (run / "images").is_dir() else []
    makes_pictures = "spark" in _task_names(path)  # the tasks whose pictures() returns an image
    assert pictured == ([3, 4] if makes_pictures else []), pictured
