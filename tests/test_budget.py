"""train.budget / pretrain --budget: a wall-clock budget fixed into a step count once, recorded,
and continued exactly on resume. Real runs of the tiny recipe (a step takes milliseconds to
a fraction of a second on a shared 2-core machine, so the time checks are loose)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from convssl.errors import ConfigError
from convssl import checkpoint as ckpt_io
from convssl.train.budget import format_seconds
from convssl.train_config import parse_budget
from convssl.train.trainer import pretrain

sys.path.insert(0, str(Path(__file__).parent))
from test_reliability import UNLABELED, tiny_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("20m", 1200), ("1.5h", 5400), (".5m", 30), (" 2 m", 120)])
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["20x", "-5m", "5", "", "0s", "1e3s", "m"])
def test_bad_budgets_are_one_line(text):
    with pytest.raises(ConfigError, match="write a positive number and a unit") as err:
        parse_budget(text)
    assert "\n" not in str(err.value)


def test_bad_budget_on_the_command_line_is_one_line_before_any_work(tmp_path, capsys):
    from convssl.cli import main

    base = ["pretrain", "--recipe", str(ROOT / "recipes" / "rotation_resnet18_small.yaml"), "--data",
            str(UNLABELED), "--out", str(tmp_path / "run")]
    for extra, pattern in ((["--budget", "20x"], "budget '20x'"), (["--budget=-5m"], "budget '-5m'"),
                           (["--budget", "5m", "--max-steps", "9"], "not two")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and pattern in err, err
    assert not (tmp_path / "run").exists()
    assert [format_seconds(s) for s in (95, 1250, 40000)] == ["95s", "21m", "11.2h"]


def budget_recipe(budget: str, **train):
    return tiny_recipe(train={"max_steps": 0, "budget": budget, "log_every": 5, **train})


def test_budget_run_ends_within_the_budget_and_records_its_plan(tmp_path, capsys):
    summary = pretrain(budget_recipe("8s"), str(UNLABELED), tmp_path / "run", progress=False)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    record = config["run"]["budget"]
    assert config["train"]["budget"] == "8s" and config["train"]["max_steps"] == summary["steps"] > 0
    assert record["total_steps"] == summary["steps"] and record["seconds"] == 8 and record["seconds_per_step"] > 0
    assert ckpt_io.load(tmp_path / "run")["budget"] == record
    spent = record["timing_seconds"] + summary["seconds"]
    assert spent <= 1.5 * 8, f"timing {record['timing_seconds']:.1f} s + loop {summary['seconds']:.1f} s"
    line = capsys.readouterr().out
    assert re.search(rf"budget 8s: {summary['steps']} steps at [\d.]+ s/step measured over \d+ steps, "
                     r"warm-up 0 steps", line), line


def test_budget_run_equals_the_same_max_steps_run_and_resume_continues_its_plan(tmp_path, capsys):
    """The timed steps are undone (state snapshot, batches replayed): a budget run is the run
    of its decided max_steps, bit for bit; a resumed budget run does not time again."""
    recipe = budget_recipe("6s", ckpt_every=0)
    pretrain(recipe, str(UNLABELED), tmp_path / "split", progress=False, stop_after=2)
    assert "budget 6s: " in capsys.readouterr().out
    first = ckpt_io.load(tmp_path / "split")
    steps = first["config"]["train"]["max_steps"]
    assert first["step"] == 2 and steps >= 2 and first["budget"]["total_steps"] == steps
    resumed = pretrain(recipe, str(UNLABELED), tmp_path / "split", resume=True, progress=False)
    assert resumed["steps"] == steps and "budget 6s: " not in capsys.readouterr().out  # not timed again
    last = ckpt_io.load(tmp_path / "split")
    assert last["budget"] == first["budget"] and last["config"]["train"]["max_steps"] == steps

    straight = pretrain(tiny_recipe(train={"max_steps": steps, "log_every": 5, "ckpt_every": 0}), str(UNLABELED),
                        tmp_path / "straight", progress=False)
    assert straight["steps"] == steps
    a, b = ckpt_io.load(tmp_path / "straight")["task"], last["task"]
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_budget_too_small_for_the_warmup_names_the_minimum(tmp_path):
    # warm-up of one epoch: 5000 samples / batch 8 = 625 steps
    recipe = tiny_recipe(train={"max_steps": 0, "budget": "2s"}, optim={"warmup_epochs": 1.0})
    with pytest.raises(ConfigError) as err:
        pretrain(recipe, str(UNLABELED), tmp_path / "run", progress=False)
    message = str(err.value)
    assert "\n" not in message and "warm-up (optim.warmup_epochs 1 = 625 steps)" in message
    minimum = re.search(r"give at least --budget (\S+?),", message).group(1)
    per_step = float(re.search(r"at ([\d.e-]+) s/step", message).group(1))
    assert parse_budget(minimum) >= 625 * per_step  # a value --budget takes, enough for the warm-up
    assert not ckpt_io.latest(tmp_path / "run" / "checkpoints")


def test_a_decided_max_steps_beside_a_budget_is_used_with_a_warning(tmp_path, capsys):
    """A budget run's config.yaml (train.budget and its decided train.max_steps) used as a
    recipe runs those steps without timing; the user is told."""
    summary = pretrain(tiny_recipe(train={"max_steps": 3, "budget": "1h"}), str(UNLABELED), tmp_path / "run",
                       progress=False)
    captured = capsys.readouterr()
    assert summary["steps"] == 3 and "budget 1h: " not in captured.out
    assert "train.budget 1h with train.max_steps 3: the steps are given" in captured.err
