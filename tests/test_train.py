"""The trainer: DDP equals one process, resume equals an uninterrupted run, bad input fails clearly."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convssl.errors import ConfigError, ConvsslError
from convssl.recipe import load_recipe, recipe_from_dict
from convssl import checkpoint as ckpt_io
from convssl.train.trainer import pretrain

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "dist_scripts" / "train_fixed_batches.py"
UNLABELED = str(ROOT / "data" / "fmnist" / "unlabeled")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "ssl"), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}


def final_task_weights(run: Path) -> dict:
    return ckpt_io.load(ckpt_io.latest(run / "checkpoints"))["task"]


def _free_port() -> int:
    """A port nobody listens on now (a fixed one collides with parallel test runs)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_ranks_equal_one_process(tmp_path):
    steps, batch = 3, 16
    single = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "one"), str(steps), str(batch)],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", str(_free_port()), str(SCRIPT), str(tmp_path / "two"), str(steps), str(batch)]
    ddp = subprocess.run(torchrun, env=ENV, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = final_task_weights(tmp_path / "one"), final_task_weights(tmp_path / "two")
    assert set(one) == set(two)
    start = recipe_weights_at_init()
    moved = max((one[k] - start[k]).abs().max().item() for k in one if k in start)
    assert moved > 1e-3, "training changed the weights"
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    lines = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == steps and all("loss" in l for l in lines)


    # A 2-rank checkpoint resumed by 1 process continues (one more step, on the real shards)
    # and says exactly what differs from a 2-process continuation.
    sys.path.insert(0, str(ROOT / "tests" / "dist_scripts"))
    from train_fixed_batches import recipe  # noqa: E402

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        summary = pretrain(recipe(steps + 1, batch), UNLABELED, tmp_path / "two", resume=True, progress=False)
    assert summary["steps"] == steps + 1
    warning = err.getvalue()
    assert "written by 2 process(es) with 1: weights, optimizer, schedule and step 3 continue exactly" in warning
    assert f"data position in samples ({steps * batch} read" in warning and "re-seeded per rank" in warning
    ck = ckpt_io.load(tmp_path / "two")
    assert ck["data"]["world_size"] == 1 and isinstance(ck["rng"], dict)


def recipe_weights_at_init() -> dict:
    sys.path.insert(0, str(ROOT / "tests" / "dist_scripts"))
    from train_fixed_batches import recipe  # noqa: E402

    from convssl.encoders import build_encoder
    from convssl.tasks.registry import build_task
    from convssl.train.state import seed_all

    r = recipe(1, 16)
    seed_all(r.train.seed)
    return build_task(r.task, build_encoder(r.encoder), r.data).state_dict()


def small_recipe(**train):
    return recipe_from_dict({
        "encoder": {"spec": "custom_nets:small_convnet", "in_chans": 1},
        "data": {"size": 16, "channels": 1, "mean": [0.286], "std": [0.353], "batch_size": 8,
                 "workers": 2, "shuffle_buffer": 64, "scale": [0.3, 1.0]},
        "task": {"name": "rotation", "head": "mlp", "hidden": 32},
        "optim": {"name": "lars", "lr_per_256": 1.0, "warmup_epochs": 0, "clip_grad": 5.0},
        "train": {"seed": 1, "log_every": 2, "ckpt_every": 4, "channels_last": True, **train},
    })


def test_resume_equals_uninterrupted_run(tmp_path):
    straight = pretrain(small_recipe(max_steps=8), UNLABELED, tmp_path / "straight", progress=False)
    assert straight["steps"] == 8
    pretrain(small_recipe(max_steps=8), UNLABELED, tmp_path / "split", progress=False, stop_after=4)
    assert ckpt_io.load(tmp_path / "split")["step"] == 4
    resumed = pretrain(small_recipe(max_steps=8), UNLABELED, tmp_path / "split", resume=True, progress=False)
    assert resumed["steps"] == 8
    a, b = final_task_weights(tmp_path / "straight"), final_task_weights(tmp_path / "split")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    ck = ckpt_io.load(tmp_path / "split")
    assert ck["step"] == 8 and ck["data"]["per_rank_batches"] == 8
    again = pretrain(small_recipe(max_steps=8), UNLABELED, tmp_path / "split", resume=True, progress=False)
    assert again["steps"] == 8 and again["checkpoint"] == ck["path"]  # a finished run names its checkpoint
    # the backbone is stored under the original model's keys, equal to the task's copy
    assert ck["encoder"] and {f"encoder.model.{k}" for k in ck["encoder"]} == {k for k in ck["task"] if k.startswith("encoder.model.")}
    for k, v in ck["encoder"].items():
        assert torch.equal(v, ck["task"][f"encoder.model.{k}"])
    for name in ("config.yaml", "metrics.jsonl"):
        assert (tmp_path / "split" / name).is_file()
    assert list((tmp_path / "split" / "tensorboard").iterdir())


def test_existing_run_needs_resume_and_matching_recipe(tmp_path):
    pretrain(small_recipe(max_steps=2), UNLABELED, tmp_path / "run", progress=False)
    with pytest.raises(ConvsslError, match="--resume"):
        pretrain(small_recipe(max_steps=2), UNLABELED, tmp_path / "run", progress=False)
    changed = recipe_from_dict({**small_recipe(max_steps=4).to_dict(), "optim": {"name": "sgd"}})
    with pytest.raises(ConfigError, match="optim.name"):
        pretrain(changed, UNLABELED, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(ConvsslError, match="no checkpoint"):
        pretrain(small_recipe(max_steps=2), UNLABELED, tmp_path / "fresh", resume=True, progress=False)


def test_nan_loss_stops_with_clear_error(tmp_path):
    recipe = recipe_from_dict({**small_recipe(max_steps=6).to_dict(),
                               "optim": {"name": "sgd", "lr_per_256": 1e12, "nesterov": False}})
    with pytest.raises(ConvsslError, match="NaN or infinite"):
        pretrain(recipe, UNLABELED, tmp_path / "nan", progress=False)


def test_sigterm_at_a_random_moment_then_resume_equals_the_uninterrupted_run(tmp_path):
    """SIGTERM lands anywhere in a step (then three impatient Ctrl-Cs while it saves): the
    stop waits for the step boundary, so weights, BN statistics and optimizer state after
    the resume equal the uninterrupted run's bit for bit."""
    import random

    def cmd(out, *extra):
        return [sys.executable, "-m", "convssl", "pretrain", "--recipe", str(ROOT / "recipes" / "rotation_resnet18_small.yaml"),
                "--data", UNLABELED, "--out", str(out), "--max-steps", "40", "--quiet", "--device", "cpu",
                "--set", "encoder.spec=custom_nets:small_convnet", "--set", "encoder.small_input=false",
                "--set", "data.size=16", "--set", "data.batch_size=8", "--set", "train.ckpt_every=0",
                "--set", "train.log_every=1", "--set", "train.channels_last=false", *extra]

    straight = subprocess.run(cmd(tmp_path / "straight"), env=ENV, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = tmp_path / "run"
    proc = subprocess.Popen(cmd(run), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    delay = random.uniform(0, 0.2)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    for _ in range(3):
        time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (delay, err[-2000:])
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err, err[-2000:]
    stopped = ckpt_io.load(run)["step"]
    assert 1 <= stopped < 40, stopped
    resumed = subprocess.run(cmd(run, "--resume"), env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = ckpt_io.load(tmp_path / "straight"), ckpt_io.load(run)
    assert a["step"] == b["step"] == 40
    assert a["task"].keys() == b["task"].keys()
    for k, v in a["task"].items():
        assert torch.equal(v, b["task"][k]), (k, stopped, delay)  # running_mean/var and num_batches_tracked too
    for i, state in a["optimizer"]["state"].items():
        for name, v in state.items():
            assert torch.equal(v, b["optimizer"]["state"][i][name]), (i, name)


def test_unknown_recipe_key_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="optim.lr_per256"):
        load_recipe(ROOT / "recipes" / "rotation_resnet18_small.yaml", ["optim.lr_per256=0.1"])
    with pytest.raises(ConfigError, match="task.heads"):
        load_recipe(ROOT / "recipes" / "rotation_resnet18_small.yaml", ["task.heads=mlp"])
    with pytest.raises(ConfigError, match="unknown task"):
        load_recipe(ROOT / "recipes" / "rotation_resnet18_small.yaml", ["task.name=jigsaw2"])


def test_missing_data_is_a_clear_error(tmp_path):
    from convssl.errors import DataError

    with pytest.raises(DataError):
        pretrain(small_recipe(max_steps=2), str(tmp_path / "nowhere"), tmp_path / "run", progress=False)


def test_a_bare_cuda_device_gets_this_rank_s_index(monkeypatch):
    """``--device cuda`` crashed in torch.cuda.set_device (it needs an index); each torchrun
    rank takes the GPU of its LOCAL_RANK. Device objects need no GPU to be made."""
    from convssl.dist import training_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert training_device("cuda") == torch.device("cuda", 0)
    assert training_device("cuda:1") == torch.device("cuda", 1)
    assert training_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert training_device("cuda") == torch.device("cuda", 3)
    assert training_device(None) == (torch.device("cuda", 3) if torch.cuda.is_available() else torch.device("cpu"))


def test_a_ctrl_c_during_the_interrupt_message_keeps_the_message_through_any_chain(capsys):
    """The stop's 'interrupted at step N; checkpoint saved' may meet a further Ctrl-C while the
    loader's workers shut down, where the KeyboardInterrupt's context is an error of that
    shutdown, not the stop's message itself (exit 130, 'interrupted', in a CI run)."""
    from convssl.cli import _convssl_error_in_chain
    from convssl.errors import ConvsslError

    stop = ConvsslError("interrupted at step 5; checkpoint saved to X")
    with pytest.raises(KeyboardInterrupt) as info:  # the interrupt replaces the error in flight
        try:
            raise stop
        finally:
            try:
                raise OSError("a worker's pipe closed")  # handled inside the shutdown
            except OSError:
                raise KeyboardInterrupt  # noqa: B904 - a signal, not a re-raise
    caught = info.value
    assert isinstance(caught.__context__, OSError)
    assert _convssl_error_in_chain(caught) is stop
    assert _convssl_error_in_chain(KeyboardInterrupt()) is None
