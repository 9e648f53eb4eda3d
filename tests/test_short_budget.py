"""optim.short_budget: the optimizer settings a recipe wants when --budget decides a short run.

Real budget runs of the tiny recipe (5000 samples at batch 8: 625 steps an epoch, so a
budget of seconds is a small fraction of an epoch)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from convssl.errors import ConfigError
from convssl.train.trainer import pretrain

sys.path.insert(0, str(Path(__file__).parent))
from test_reliability import UNLABELED, tiny_recipe  # noqa: E402

STEPS_PER_EPOCH = 5000 // 8
SHORT = {"below_epochs": 100, "name": "sgd", "lr_per_256": 0.3, "nesterov": False, "warmup_fraction": 0.25}


def load_checkpoint(run: Path) -> dict:
    (path,) = sorted((run / "checkpoints").glob("*.pt"))[-1:]
    return torch.load(path, map_location="cpu", weights_only=False)


def test_a_short_budget_run_takes_the_short_settings_and_equals_a_run_started_with_them(tmp_path, capsys):
    # the recipe's own settings would refuse a short budget: a 1-epoch warm-up (625 steps)
    recipe = tiny_recipe(train={"max_steps": 0, "budget": "8s", "ckpt_every": 0},
                         optim={"name": "adamw", "lr_per_256": 0.01, "warmup_epochs": 1.0, "short_budget": SHORT})
    pretrain(recipe, str(UNLABELED), tmp_path / "split", progress=False, stop_after=3)
    out = capsys.readouterr().out
    config = yaml.safe_load((tmp_path / "split" / "config.yaml").read_text())
    steps = config["train"]["max_steps"]
    epochs = steps / STEPS_PER_EPOCH
    assert steps > 3 and epochs < SHORT["below_epochs"]
    optim = config["optim"]
    assert (optim["name"], optim["lr_per_256"], optim["nesterov"]) == ("sgd", 0.3, False)
    assert optim["warmup_epochs"] == pytest.approx(0.25 * epochs)  # warmup_fraction of the decided run
    assert optim["short_budget"] == SHORT  # the recorded recipe still says where the settings came from
    record = config["run"]["budget"]["short_budget"]
    assert record["run_epochs"] == pytest.approx(epochs) and record["settings"]["name"] == "sgd"
    assert re.search(r"budget 8s: a run of [\d.e-]+ epochs, under optim.short_budget.below_epochs", out), out
    assert f"warm-up {round(0.25 * steps)} steps" in out

    resumed = pretrain(recipe, str(UNLABELED), tmp_path / "split", resume=True, progress=False)
    assert resumed["steps"] == steps and "budget 8s: " not in capsys.readouterr().out  # not timed again

    straight = tiny_recipe(train={"max_steps": steps, "ckpt_every": 0},
                           optim={"name": "sgd", "lr_per_256": 0.3, "nesterov": False,
                                  "warmup_epochs": optim["warmup_epochs"]})
    pretrain(straight, str(UNLABELED), tmp_path / "straight", progress=False)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == steps
    for k in a["task"]:
        assert torch.equal(a["task"][k], b["task"][k]), k
    sgd_state = [s for s in b["optimizer"]["state"].values()]
    assert sgd_state and all(set(s) == {"momentum_buffer"} for s in sgd_state)  # SGD's state, not AdamW's


def test_a_run_not_short_enough_keeps_the_recipe_settings(tmp_path):
    recipe = tiny_recipe(train={"max_steps": 0, "budget": "3s"},
                         optim={"name": "adamw", "lr_per_256": 0.01, "short_budget": {**SHORT, "below_epochs": 1e-6}})
    pretrain(recipe, str(UNLABELED), tmp_path / "run", progress=False)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["optim"]["name"] == "adamw" and config["optim"]["warmup_epochs"] == 0
    assert "short_budget" not in config["run"]["budget"]


@pytest.mark.parametrize("section, pattern", [
    ({"below_epochs": 5, "lr": 0.1}, r"unknown key\(s\) optim.short_budget.lr; valid keys: .*lr_per_256"),
    ({"name": "sgd"}, "below_epochs must be a number > 0"),
    ({"below_epochs": 5, "warmup_fraction": 1.5}, r"warmup_fraction must be in \[0, 1\)"),
    ({"below_epochs": 5, "warmup_fraction": 0.1, "warmup_epochs": 1}, "both warmup_fraction and warmup_epochs"),
    ({"below_epochs": 5, "name": "rmsprop"}, "optim.short_budget.name"),
    ({"below_epochs": 5, "lr_per_256": -1}, "lr_per_256"),
])
def test_a_malformed_short_budget_fails_at_load_in_one_line(section, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        tiny_recipe(optim={"short_budget": section})
    assert "\n" not in str(err.value)
