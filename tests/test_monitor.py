"""Online monitoring: collapse flagged for a constant encoder only, the probe sends no
gradient into the encoder, and a monitored run trains exactly as an unmonitored one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from convssl.data.config import DataConfig
from convssl.encoders import EncoderConfig, build_encoder
from convssl.recipe import recipe_from_dict
from convssl.tasks.registry import build_task
from convssl import checkpoint as ckpt_io
from convssl import pretrain  # the public API: monitor=SHARDS is its online monitor callback
from convssl.eval.monitor import Monitor, effective_rank, normalized_std

ROOT = Path(__file__).resolve().parents[1]
LABELED = str(ROOT / "data" / "fmnist" / "train")
UNLABELED = str(ROOT / "data" / "fmnist" / "unlabeled")
DATA = DataConfig(size=16, channels=1, mean=(0.286,), std=(0.353,))


@pytest.fixture(scope="module")
def monitor():
    return Monitor(LABELED, DATA, samples=300, probe_epochs=3)


def encoder(constant: bool):
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(spec="custom_nets:gn_convnet", in_chans=1, input_size=16))
    if constant:  # every conv outputs its bias: the same features for every image
        for m in enc.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.zeros_(m.weight)
    return enc


def test_collapse_is_flagged_for_a_constant_encoder_and_not_for_a_random_one(monitor):
    random_scores = monitor.evaluate(encoder(constant=False))
    assert random_scores["monitor/collapsed"] == 0.0 and monitor.note == ""
    assert random_scores["monitor/eff_rank"] > 5 and random_scores["monitor/knn_top1"] > 0.3
    assert random_scores["monitor/probe_top1"] > 0.3  # 10 classes: chance is 0.1
    constant_scores = monitor.evaluate(encoder(constant=True))
    assert constant_scores["monitor/collapsed"] == 1.0 and "COLLAPSE" in monitor.note
    assert constant_scores["monitor/feat_std"] < 1e-6 and constant_scores["monitor/eff_rank"] == 0.0


def test_collapse_statistics_match_closed_forms():
    # rank-2 data with equal singular values -> effective rank exactly 2
    u = torch.linalg.qr(torch.randn(50, 2, dtype=torch.float64))[0]
    u = u - u.mean(0)
    u = torch.linalg.qr(u)[0]  # orthonormal, centred columns
    feats = u @ torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0]], dtype=torch.float64)
    assert math.isclose(effective_rank(feats), 2.0, rel_tol=1e-6)
    # isotropic Gaussian: each normalised coordinate has std ~ 1/sqrt(D)
    g = torch.randn(20000, 64, generator=torch.Generator().manual_seed(0))
    assert abs(normalized_std(g) - 1.0) < 0.02


def test_the_online_probe_leaves_encoder_gradients_and_state_unchanged(monitor):
    r = recipe_from_dict({"encoder": {"spec": "custom_nets:small_convnet", "in_chans": 1},
                          "data": {"size": 16, "channels": 1, "mean": [0.286], "std": [0.353]},
                          "task": {"name": "rotation", "hidden": 16}})
    enc = build_encoder(r.encoder)
    task = build_task(r.task, enc, r.data).train()
    task({"img": [torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)]})["loss"].backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters()}
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    rng = torch.get_rng_state()
    monitor.evaluate(enc)
    assert enc.training  # mode restored
    assert torch.equal(torch.get_rng_state(), rng)  # no draw from the global stream
    for n, p in enc.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    for k, v in enc.state_dict().items():
        assert torch.equal(v, state[k]), k  # BN running statistics too


def tiny(**train):
    return recipe_from_dict({
        "encoder": {"spec": "custom_nets:small_convnet", "in_chans": 1},
        "data": {"size": 16, "channels": 1, "mean": [0.286], "std": [0.353], "batch_size": 8, "workers": 0,
                 "shuffle_buffer": 16},
        "task": {"name": "rotation", "hidden": 16},
        "optim": {"name": "sgd", "lr_per_256": 0.5, "weight_decay": 0.0},
        "train": {"max_steps": 3, "seed": 0, "log_every": 1, "ckpt_every": 0, "channels_last": False, **train},
    })


def test_a_monitored_run_trains_exactly_as_an_unmonitored_one(tmp_path):
    pretrain(tiny(), UNLABELED, tmp_path / "off", progress=False)
    pretrain(tiny(monitor_every=2), UNLABELED, tmp_path / "on", progress=False, monitor=LABELED)
    a = ckpt_io.load(ckpt_io.latest(tmp_path / "off" / "checkpoints"))["task"]
    b = ckpt_io.load(ckpt_io.latest(tmp_path / "on" / "checkpoints"))["task"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = [json.loads(l) for l in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    monitored = [l for l in lines if "monitor/knn_top1" in l]
    assert [l["step"] for l in monitored] == [2, 3]  # every 2 steps, and at the run's last step
    assert {"monitor/probe_top1", "monitor/feat_std", "monitor/eff_rank", "monitor/collapsed"} <= set(monitored[0])
    assert list((tmp_path / "on" / "tensorboard").iterdir())


def test_a_monitored_run_ends_with_the_monitor_verdict_line(tmp_path, capsys):
    """The last thing a monitored pretrain prints is the monitor's kNN with its interval and
    its gain over random init, as the summary the Python API returns."""
    import yaml

    from convssl.cli import main

    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny(monitor_every=100).to_dict()))
    assert main(["pretrain", "--recipe", str(recipe_file), "--data", UNLABELED, "--out", str(tmp_path / "run"),
                 "--monitor", LABELED, "--quiet", "--device", "cpu"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("monitor: "))
    assert "kNN@20" in line and "over random init: " in line, line
    assert line.rsplit(": ", 1)[1] in ("pays", "no gain measurable", "hurts"), line
    last = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 3 and f"{100 * last['monitor/knn_top1']:.1f}" in line  # the end-of-run check
