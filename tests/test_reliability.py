"""Faults lose nothing, hang nothing, run nothing: hostile checkpoints, killed writers,
bad configuration, failing user code, and errors while loader workers run.

Real processes where the fault is about processes (a hang shows only at interpreter
exit, a kill -9 only in another process); in-process CLI calls elsewhere, for speed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from convssl.atomic import clean_stale_temps, write_atomic
from convssl.cli import main
from convssl.errors import ConfigError, ConvsslError, EncoderError
from convssl.recipe import check_batch, load_recipe, recipe_from_dict
from convssl import checkpoint as ckpt_io

ROOT = Path(__file__).resolve().parents[1]
FMNIST = ROOT / "data" / "fmnist"
RECIPES = ROOT / "recipes"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "ssl"), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}


def convssl_cli(*args, timeout=60):
    """Run ``python -m convssl ARGS`` as a user would; returns (completed process, seconds)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "convssl", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    return done, time.perf_counter() - started


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and "Warning" not in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# ---- item 2: a checkpoint that would run code is refused, and its payload never runs -----

class _Payload:
    """What an attacker puts in a "checkpoint": unpickling it runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def hostile_checkpoint(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    run = tmp_path / "run"
    path = ckpt_io.step_path(run / "checkpoints", 5)
    path.parent.mkdir(parents=True)
    torch.save({"format": ckpt_io.FORMAT, "step": 5, "config": {}, "encoder": {}, "x": _Payload(marker)}, path)
    # the payload is live: a plain torch.load (what convssl did before) runs it
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, timeout=60)
    assert marker.exists(), "the test payload did not run under weights_only=False"
    marker.unlink()
    return path, marker


def test_hostile_checkpoint_is_refused_by_probe_export_and_resume(hostile_checkpoint, tmp_path, capsys):
    path, marker = hostile_checkpoint
    run = path.parent.parent
    commands = {
        "probe": ["probe", "--ckpt", path, "--train", FMNIST / "train", "--val", FMNIST / "test",
                  "--out", tmp_path / "probe"],
        "export": ["export", "--ckpt", run, "--out", tmp_path / "backbone.pth"],
        "pretrain": ["pretrain", "--recipe", RECIPES / "rotation_resnet18_small.yaml", "--data",
                     FMNIST / "unlabeled", "--out", run, "--resume", "--quiet", "--device", "cpu"],
    }
    for name, argv in commands.items():
        assert main([str(a) for a in argv]) == 2, name
        err = capsys.readouterr().err
        assert "refused to load" in err and "posix.system" in err and "nothing in it was run" in err, (name, err)
        assert len(err.strip().splitlines()) == 1, err
        assert not marker.exists(), f"{name} ran the checkpoint's payload"


def test_convssl_checkpoints_hold_only_weights_only_types(tmp_path):
    """RNG state included: a checkpoint as the trainer writes it loads with weights_only=True."""
    from convssl.train.state import rng_state, set_rng_state

    import numpy as np

    np.random.randn()  # leave a cached Gaussian in numpy's state
    state = rng_state()
    path = ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "rng": state, "step": 1}, tmp_path / "step-00000001.pt")
    drawn = (np.random.randn(), np.random.rand(3), torch.rand(2))
    set_rng_state(ckpt_io.load(path)["rng"])
    again = (np.random.randn(), np.random.rand(3), torch.rand(2))
    assert drawn[0] == again[0] and np.array_equal(drawn[1], again[1]) and torch.equal(drawn[2], again[2])


# ---- item 5: one atomic write; a writer killed mid-way leaves a temp that a start removes --

_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from convssl.atomic import write_atomic

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"x" * (1 << 20))
            f.flush()
            Path(sys.argv[2]).touch()  # half written: tell the test
            time.sleep(60)

    write_atomic(sys.argv[1], write)
""")


def test_kill_9_mid_write_keeps_the_old_file_and_the_temp_is_cleaned(tmp_path):
    target = tmp_path / "step-00000004.pt"
    target.write_bytes(b"the previous checkpoint")
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target), str(ready)], env=ENV)
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".convssl-tmp")]
        assert len(temps) == 1
        assert clean_stale_temps(tmp_path) == []  # its writer still runs: left alone
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert target.read_bytes() == b"the previous checkpoint"
    assert temps[0].exists() and temps[0].stat().st_size == 1 << 20  # what kill -9 leaves
    assert clean_stale_temps(tmp_path) == temps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready", target.name]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = write_atomic(tmp_path / "manifest.json", "old\n")

    def broken(tmp):
        Path(tmp).write_text("half")
        raise KeyboardInterrupt  # Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, broken)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_export_cleans_stale_temps_and_refuses_non_finite_weights(tmp_path):
    from convssl.encoders import EncoderConfig, build_encoder
    from convssl.exports import ExportError, export_backbone

    cfg = EncoderConfig(spec="custom_nets:small_convnet", input_size=16, in_chans=1)
    encoder = build_encoder(cfg)
    weights = encoder.backbone_state_dict()
    ckpt = {"format": ckpt_io.FORMAT, "step": 3, "encoder": weights,
            "config": {"encoder": {"spec": cfg.spec, "input_size": 16, "in_chans": 1}, "data": {}}}
    good = ckpt_io.save_atomic(ckpt, tmp_path / "good.pt")
    out = tmp_path / "export"
    out.mkdir()
    stale = out / ".backbone.pth.999999999.0123abcd.convssl-tmp"  # from a killed export (no such pid)
    stale.write_bytes(b"\0" * 1000)
    export_backbone(good, out / "backbone.pth", fmt="state_dict", trust=[cfg.spec])
    assert not stale.exists() and (out / "backbone.pth").is_file()

    poisoned = dict(weights)
    poisoned["0.weight"] = weights["0.weight"].clone().fill_(float("nan"))
    bad = ckpt_io.save_atomic({**ckpt, "encoder": poisoned}, tmp_path / "bad.pt")
    with pytest.raises(ExportError, match=r"NaN or infinite weights in 1 tensor\(s\) \(0.weight\)"):
        export_backbone(bad, tmp_path / "nan.pth", fmt="state_dict", trust=[cfg.spec])
    assert not (tmp_path / "nan.pth").exists()

    from convssl.exports import export_torchscript

    ts_stale = out / ".backbone.torchscript.pt.999999999.0123abcd.convssl-tmp"
    ts_stale.write_bytes(b"\0" * 1000)
    export_torchscript(good, out, trust=[cfg.spec])  # deployment formats share the helper and the checks
    assert not ts_stale.exists() and (out / "backbone.torchscript.pt").is_file()
    with pytest.raises(ConvsslError, match=r"NaN or infinite weights in 1 tensor\(s\) \(0.weight\)"):
        export_torchscript(bad, tmp_path / "nan.torchscript.pt", trust=[cfg.spec])
    assert not (tmp_path / "nan.torchscript.pt").exists()


# ---- item 8: configuration mistakes are one line, before anything is built -------------

def test_numbers_as_users_write_them(tmp_path):
    recipe = load_recipe(RECIPES / "rotation_resnet18_small.yaml", ["optim.lr_per_256=1e-4", "train.max_steps=1e3"])
    assert recipe.optim.lr_per_256 == 1e-4 and recipe.train.max_steps == 1000
    text = (RECIPES / "rotation_resnet18_small.yaml").read_text()
    written = tmp_path / "r.yaml"
    written.write_text(text.replace("optim:\n", "optim:\n  weight_decay: 5e-4\n", 1))
    assert load_recipe(written).optim.weight_decay == 5e-4  # YAML 1.1 reads 5e-4 as a string


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", r"data.batch_size .*must be >= 1, got 0"),
    ("data.batch_size=-8", r"data.batch_size .*must be >= 1"),
    ("data.workers=-1", r"data.workers .*must be >= 0"),
    ("optim.lr_per_256=-0.1", r"optim.lr_per_256 must be >= 0"),
    ("optim.lr_per_256=.nan", r"optim.lr_per_256: expected a finite number, got nan"),
    ("optim.lr_per_256=.inf", r"optim.lr_per_256: expected a finite number, got inf"),
    ("train.epochs=.inf", r"train.epochs: expected a finite number, got inf"),
    ("data.scale=[0.2, .inf]", r"data.scale\[1\]: expected a finite number, got inf"),
    ("train.max_steps=-5", r"train.max_steps .*must be >= 0"),
    ("train.ckpt_every=-1", r"train.ckpt_every .*must be >= 0"),
    ("optim.warmup_epochs=-1", r"optim.warmup_epochs must be >= 0"),
    ("optim.momentum=1.5", r"optim.momentum must be in \[0, 1\)"),
    ("optim.lr_per256=0.1", r"unknown key optim.lr_per256 \(did you mean optim.lr_per_256\?\)"),
    ("optm.name=sgd", r"optm \(did you mean optim\?\)"),
    ("task.name=rotaton", r"unknown task 'rotaton' \(did you mean rotation\?\)"),
])
def test_bad_values_are_one_clear_line(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(RECIPES / "rotation_resnet18_small.yaml", [override])


def test_contrastive_and_world_size_batch_checks():
    with pytest.raises(ConfigError, match="simclr takes its negatives.*data.batch_size 1 has none"):
        load_recipe(RECIPES / "simclr_resnet18_small.yaml", ["data.batch_size=1"])
    with pytest.raises(ConfigError, match="queue_size 64 is smaller than the global batch"):
        load_recipe(RECIPES / "moco_resnet18_small.yaml", ["task.queue_size=64", "data.batch_size=128"])
    moco = load_recipe(RECIPES / "moco_resnet18_small.yaml", ["task.bn_groups=4", "data.batch_size=32"])
    check_batch(moco, world_size=2)  # 16 per rank, 4 groups of 4: fine
    with pytest.raises(ConfigError, match="bn_groups 4 needs at least 8 samples per process, the batch gives 4"):
        check_batch(moco, world_size=8)
    with pytest.raises(ConfigError, match="data.batch_size 4 is the global batch, smaller than the 8 processes"):
        check_batch(recipe_from_dict({**moco.to_dict(), "data": {**moco.to_dict()["data"], "batch_size": 4},
                                      "task": {"name": "rotation"}}), world_size=8)


def test_pretrain_cli_bad_value_exits_2_in_one_line(tmp_path, capsys):
    argv = ["pretrain", "--recipe", RECIPES / "rotation_resnet18_small.yaml", "--data", FMNIST / "unlabeled",
            "--out", tmp_path / "run", "--set", "data.batch_size=0"]
    assert main([str(a) for a in argv]) == 2
    assert "data.batch_size (the global batch) must be >= 1, got 0" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


# ---- item 9: any convnet builder; the user's errors name the spec -----------------------

def test_builder_with_kwargs_gets_no_forced_in_chans(capsys):
    """torchvision's builders take **kwargs, which they pass to a class without in_chans."""
    assert main(["info", "torchvision.models:resnet18", "--in-chans", "1", "--small-input"]) == 0
    out = capsys.readouterr().out
    assert "input     1 x 32 x 32" in out and "11,167,680" in out  # convssl adapted conv1 to 1 channel


def test_user_callable_error_is_one_line_naming_the_spec(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_nets.py").write_text(textwrap.dedent("""
        def net(in_chans=3, width=8):
            raise RuntimeError("width must be even\\n(details on a second line)")
        def takes_nothing():
            import torch.nn as nn
            return nn.Conv2d(3, 8, 3)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from convssl.encoders import build_encoder

    with pytest.raises(EncoderError, match=r"encoder 'broken_nets:net': broken_nets.net\(in_chans=1, width=7\) "
                                           r"raised RuntimeError: width must be even$"):
        build_encoder("broken_nets:net", in_chans=1, input_size=16, kwargs={"width": 7})
    assert main(["info", "broken_nets:net"]) == 2
    assert "broken_nets:net" in one_line_error(capsys.readouterr().err)


# ---- item 1 (probe): errors while workers could run exit 2 in one line, within seconds ---

@pytest.fixture()
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def _unwritable_folder(tmp_path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir(mode=0o555)
        return folder / "probe"
    folder = Path("/sys/convssl-test-probe")  # root can write anywhere but where the kernel refuses
    try:
        folder.mkdir()
    except OSError:
        return folder
    folder.rmdir()
    pytest.skip("no unwritable folder on this machine")


def test_probe_errors_exit_2_in_one_line_within_seconds(tmp_path, a_file):
    """Each of these hung forever at exit (workers ignore SIGTERM) or failed after the work."""
    common = ["probe", "--encoder", "custom_nets:small_convnet", "--in-chans", "1", "--size", "16",
              "--val", FMNIST / "test", "--workers", "2"]
    cases = {
        "shards without labels, no manifest": ([*common, "--train", FMNIST / "unlabeled" / "shard-000000.tar",
                                                "--out", tmp_path / "p1"], "holds no labels"),
        "--out under a file": ([*common, "--train", FMNIST / "train", "--out", a_file / "probe"],
                               "is a file, not a folder"),
        "unwritable --out": ([*common, "--train", FMNIST / "train", "--out", _unwritable_folder(tmp_path)],
                             "is not writable"),
    }
    for name, (argv, message) in cases.items():
        done, seconds = convssl_cli(*argv, timeout=150)
        assert done.returncode == 2, (name, done.stderr[-2000:])
        assert message in one_line_error(done.stderr), name
        assert seconds < 90, f"{name}: {seconds:.0f} s"  # a hang never ends (timeout 150 s)


def test_feature_pass_stops_its_workers_when_the_encoder_fails():
    from convssl.eval.features import features_of_shards

    class FailsOnSecondBatch(torch.nn.Module):
        """Stands in for any error in the feature pass (out of memory, a bad layer)."""

        stages = [None]

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("boom")
            return [x]

    try:
        features_of_shards(FailsOnSecondBatch(), str(FMNIST / "train"), size=16, channels=1, mean=(0.5,),
                           std=(0.25,), batch_size=64, workers=2)
    except RuntimeError as exc:
        # checked while the traceback (and every frame it holds) is alive, as at an
        # uncaught error's exit: then nothing else would stop the workers
        assert str(exc) == "boom"
        assert multiprocessing.active_children() == []
    else:
        pytest.fail("the encoder's error was swallowed")


# ---- item 10: CI runs the peer-reference tests ------------------------------------------

REFERENCE_LIBRARIES = ("spconv", "onnx", "onnxscript", "onnxruntime", "sklearn", "timm", "lightly", "safetensors",
                       "matplotlib")


def test_ci_and_readme_install_the_test_extra_with_the_same_command():
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^python3 -m venv .*pytest$", ci, re.M).group(0)
    assert "'.[dev,test]'" in command and command in readme
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    names = {re.split(r"[<>=\[ ]", req)[0].replace("scikit-learn", "sklearn") for req in extra}
    assert names == set(REFERENCE_LIBRARIES)


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="on CI only: there a skipped reference test is a failure")
@pytest.mark.parametrize("module", REFERENCE_LIBRARIES)
def test_ci_has_every_reference_library(module):
    import importlib

    importlib.import_module(module)


# ---- the trainer -------------------------------------------------------------------------

UNLABELED = FMNIST / "unlabeled"


def tiny_recipe(**sections):
    """Rotation on a small convnet at 16 px: a step takes milliseconds."""
    base = {
        "encoder": {"spec": "custom_nets:small_convnet", "in_chans": 1},
        "data": {"size": 16, "channels": 1, "mean": [0.286], "std": [0.353], "batch_size": 8, "workers": 0,
                 "shuffle_buffer": 64, "scale": [0.3, 1.0]},
        "task": {"name": "rotation", "head": "linear"},
        "optim": {"name": "sgd", "lr_per_256": 0.5, "warmup_epochs": 0},
        "train": {"seed": 1, "log_every": 1, "ckpt_every": 0, "channels_last": False, "max_steps": 6},
    }
    for name, values in sections.items():
        base[name] = {**base[name], **values}
    return recipe_from_dict(base)


def all_finite(ckpt: dict) -> bool:
    tensors = {**ckpt["task"], **{f"opt.{k}.{n}": v for k, s in ckpt["optimizer"]["state"].items()
                                  for n, v in s.items() if torch.is_tensor(v)}}
    return not ckpt_io.non_finite(tensors)


def test_one_nan_step_is_skipped_and_counted_and_touches_nothing(tmp_path):
    from convssl.train.trainer import pretrain

    recipe = tiny_recipe(encoder={"spec": "custom_nets:misbehaving_convnet", "kwargs": {"at_call": 3}})
    summary = pretrain(recipe, str(UNLABELED), tmp_path / "run", progress=False)
    assert summary["steps"] == 6 and summary["skipped_steps"] == 1
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line.get("skipped_steps", 0) for line in lines] == [0, 0, 1, 1, 1, 1]
    ckpt = ckpt_io.load(tmp_path / "run")
    assert all_finite(ckpt)  # BatchNorm's running statistics included: the NaN forward was undone
    assert int(ckpt["task"]["encoder.model.2.num_batches_tracked"]) == 5  # 6 forwards, 1 undone


def test_diverged_run_stops_with_a_finite_checkpoint_and_resumes_with_a_remedy(tmp_path, capsys):
    """3 NaN steps in a row (max_bad_steps 3): stop with a finite checkpoint; the advice
    (lower the learning rate, clip) is then allowed on --resume, with a warning."""
    from convssl.train.trainer import pretrain

    run = tmp_path / "run"
    nan_streak = {"spec": "custom_nets:misbehaving_convnet", "kwargs": {"at_call": 3, "count": 3}}
    diverging = tiny_recipe(encoder=nan_streak, train={"max_steps": 10, "max_bad_steps": 3})
    with pytest.raises(ConvsslError, match=r"NaN or infinite for 3 steps in a row \(up to step 5; 3 skipped in all\)"
                                           r".* The finite state is saved to .*step-00000005.pt"):
        pretrain(diverging, str(UNLABELED), run, progress=False)
    ckpt = ckpt_io.load(run)
    assert ckpt["step"] == 5 and all_finite(ckpt)
    stale = run / "checkpoints" / ".step-00000099.pt.999999999.0123abcd.convssl-tmp"
    stale.write_bytes(b"\0" * 100)  # as kill -9 during a save leaves it
    # 2 more steps: the fresh model's streak (its calls 3-5) is not reached
    remedy = tiny_recipe(encoder=nan_streak, optim={"lr_per_256": 0.1, "clip_grad": 1.0},
                         train={"max_steps": 7, "max_bad_steps": 3})
    capsys.readouterr()
    summary = pretrain(remedy, str(UNLABELED), run, progress=False, resume=True)
    err = capsys.readouterr().err
    assert "--resume changes optim.clip_grad (0.0 -> 1.0), optim.lr_per_256 (0.5 -> 0.1)" in err
    assert summary["steps"] == 7 and summary["skipped_steps"] == 0 and all_finite(ckpt_io.load(run))
    assert not stale.exists()


def test_weights_blown_up_by_an_update_never_reach_a_checkpoint(tmp_path):
    from convssl.train.trainer import pretrain

    wild = tiny_recipe(optim={"lr_per_256": 1e12, "nesterov": False}, train={"max_steps": 12, "ckpt_every": 1})
    with pytest.raises(ConvsslError, match="NaN or infinite"):
        pretrain(wild, str(UNLABELED), tmp_path / "run", progress=False)
    saved = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))
    assert saved and all(all_finite(ckpt_io.load(p)) for p in saved)


def test_warmup_longer_than_the_run_warns(tmp_path, capsys):
    from convssl.train.trainer import pretrain

    pretrain(tiny_recipe(optim={"warmup_epochs": 10}, train={"max_steps": 2}), str(UNLABELED), tmp_path / "r",
             progress=False)
    err = capsys.readouterr().err
    assert "warning: optim.warmup_epochs 10 is 6250 steps, longer than the whole run (2 steps)" in err
    assert "never gets past 0% of its peak" in err


def test_data_and_output_errors_come_before_the_model_is_built(tmp_path, a_file):
    from convssl.train.trainer import pretrain

    never = tiny_recipe(encoder={"spec": "custom_nets:unbuildable"})  # raises if it is ever built
    with pytest.raises(ConvsslError, match="does not exist|no shards|not a shard"):
        pretrain(never, str(tmp_path / "nowhere"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConvsslError, match="is a file, not a folder"):
        pretrain(never, str(UNLABELED), a_file / "run", progress=False)


@pytest.mark.parametrize("case", ["--out under a file", "unwritable --out", "model error in a step"])
def test_pretrain_errors_exit_in_one_line_within_seconds(tmp_path, a_file, case):
    out = {"--out under a file": a_file / "run", "unwritable --out": _unwritable_folder(tmp_path)}.get(
        case, tmp_path / "run")
    spec = "custom_nets:misbehaving_convnet" if case == "model error in a step" else "custom_nets:small_convnet"
    done, seconds = convssl_cli(
        "pretrain", "--recipe", RECIPES / "rotation_resnet18_small.yaml", "--data", UNLABELED, "--out", out,
        "--max-steps", "5", "--quiet", "--device", "cpu", "--set", f"encoder.spec={spec}",
        "--set", "encoder.small_input=false", "--set", "data.batch_size=8", "--set", "data.workers=2",
        "--set", "encoder.kwargs={at_call: 2, mode: raise}" if "model" in case else "train.log_every=1",
        timeout=150)
    assert seconds < 90, f"{case}: {seconds:.0f} s"  # a hang never ends (timeout 150 s)
    if case == "model error in a step":  # not the user's input: a traceback, but no hang
        assert done.returncode == 1 and "the model broke at call 2" in done.stderr
        return
    assert done.returncode == 2, done.stderr[-2000:]
    assert ("is a file, not a folder" if "file" in case else "is not writable") in one_line_error(done.stderr)
