"""Fine-tuning: class-balanced reproducible label subsets, a real start from the checkpoint
(or from random init for the baseline), layer-wise lr decay, exact resume, torchrun."""

import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from convssl.cli import main
from convssl.config import to_dict
from convssl.data.shard_dataset import ShardDataset
from convssl.encoders import EncoderConfig, build_encoder
from convssl.eval import label_subset
from convssl.finetune import finetune
from convssl.finetune.config import FinetuneRecipe, finetune_recipe
from convssl.eval.layer_decay import layer_decay_groups
from convssl import checkpoint as ckpt_io
from convssl.train.state import seed_all

ROOT = Path(__file__).resolve().parents[1]
TRAIN, TEST = str(ROOT / "data/fmnist/train"), str(ROOT / "data/fmnist/test")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "ssl"), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
ENC = EncoderConfig(spec="custom_nets:small_convnet", in_chans=1, input_size=16)
TRUST = ["--trust-encoder", ENC.spec]  # the test's own user encoder: named, as a user would


def tar_labels(path: str) -> dict[str, int]:
    """Key -> class of a labeled shard, read with the standard library's tarfile."""
    out = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".cls"):
                out[member.name[: -len(".cls")]] = int(tar.extractfile(member).read())
    return out


@pytest.fixture(scope="module")
def source_ckpt(tmp_path_factory):
    """A pretraining checkpoint in the documented format with non-trivial weights."""
    torch.manual_seed(123)
    encoder = build_encoder(ENC)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ckpt = {"format": ckpt_io.FORMAT, "step": 7,
            "config": {"encoder": to_dict(ENC), "data": {"size": 16, "channels": 1, "mean": [0.286], "std": [0.353]},
                       "task": {"name": "rotation"}},
            "encoder": encoder.backbone_state_dict(), "versions": {}}
    return ckpt_io.save_atomic(ckpt, tmp_path_factory.mktemp("pre") / "checkpoints" / "step-00000007.pt")


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> str:
    """100 test samples (10 per class) as shards: evaluation stays cheap."""
    index = label_subset.index_labels(TEST)
    out = tmp_path_factory.mktemp("val") / "val"
    label_subset.write_subset(index, label_subset.choose_subset(index.keys, index.labels, 0.1, seed=0), out,
                              fraction=0.1, seed=0)
    return str(out)


def small(**train) -> FinetuneRecipe:
    # warm-up: a quarter of the run's steps, in epochs of the 100-label subset (12 steps of 8)
    return finetune_recipe({"data": {"batch_size": 8, "workers": 2, "shuffle_buffer": 32, "scale": (0.5, 1.0),
                                     "label_fraction": 0.1},
                            "optim": {"lr_per_256": 0.05, "warmup_epochs": 0.25 * train["max_steps"] / 12},
                            "train": {"log_every": 1, "ckpt_every": 0, "channels_last": False, **train}})


def params_of(state: dict, model_sd: dict) -> dict:
    """Only the trainable parameters (not BatchNorm statistics) of an encoder state dict."""
    return {k: v for k, v in state.items() if k in model_sd}


def test_label_subsets_are_class_balanced_reproducible_and_nested(tmp_path):
    truth = tar_labels(TRAIN + "/shard-000000.tar")
    index = label_subset.index_labels(TRAIN)
    assert dict(zip(index.keys, index.labels)) == truth and index.num_classes == 10

    tenth = label_subset.choose_subset(index.keys, index.labels, 0.1, seed=0)
    assert Counter(truth[k] for k in tenth) == {c: 10 for c in range(10)}  # 1000 samples, 10 classes
    assert tenth == label_subset.choose_subset(index.keys, index.labels, 0.1, seed=0)
    assert set(tenth) != set(label_subset.choose_subset(index.keys, index.labels, 0.1, seed=1))
    hundredth = label_subset.choose_subset(index.keys, index.labels, 0.01, seed=0)
    assert Counter(truth[k] for k in hundredth) == {c: 1 for c in range(10)} and set(hundredth) <= set(tenth)
    # the shard order does not matter, only the keys and the seed
    reordered = label_subset.choose_subset(index.keys[::-1], index.labels[::-1], 0.1, seed=0)
    assert set(reordered) == set(tenth)
    assert label_subset.choose_subset(index.keys, index.labels, 1.0, seed=5) == list(index.keys)

    record = label_subset.write_subset(index, tenth, tmp_path / "labels", fraction=0.1, seed=0)
    assert label_subset.read_subset(tmp_path / "labels") == record
    assert record["keys"] == tenth and record["per_class"] == {str(c): 10 for c in range(10)}
    read = {s["key"]: (s["cls"], s["img"]) for s in ShardDataset(str(tmp_path / "labels"), labeled=True)}
    assert {k: c for k, (c, _) in read.items()} == {k: truth[k] for k in tenth}
    source = {s["key"]: s["img"] for s in ShardDataset(TRAIN, labeled=True) if s["key"] in read}
    assert all(torch.equal(source[k], read[k][1]) for k in tenth)  # the original bytes, copied


def test_layer_decay_groups_follow_the_stages():
    encoder = build_encoder("torchvision:resnet18", small_input=True, in_chans=1, input_size=32)
    head = torch.nn.Linear(512, 10)
    groups = layer_decay_groups(encoder, head, weight_decay=0.05, decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    expected = {"conv1": 1 / 16, "bn1": 1 / 16, "layer1": 1 / 16, "layer2": 1 / 8, "layer3": 1 / 4, "layer4": 1 / 2}
    named = list(encoder.model.named_parameters())
    assert len(scale) == len(named) + 2  # every parameter exactly once, plus the head's two
    for name, p in named:
        assert scale[id(p)] == expected[name.split(".")[0]], name
        assert decay[id(p)] == (0.05 if p.ndim > 1 else 0.0), name
    assert scale[id(head.weight)] == scale[id(head.bias)] == 1.0
    assert decay[id(head.weight)] == 0.05 and decay[id(head.bias)] == 0.0


def test_cli_starts_from_the_checkpoint_and_the_baseline_from_random_init(source_ckpt, val, tmp_path, capsys):
    # lr 0: the weights stay where each run started, so the starting points can be compared exactly.
    out = tmp_path / "ft"
    assert main(["finetune", "--ckpt", str(source_ckpt.parent.parent), *TRUST, "--train", TRAIN, "--val", val,
                 "--out", str(out), "--label-fraction", "0.1", "--baseline", "--max-steps", "1", "--quiet",
                 "--set", "optim.lr_per_256=0", "--set", "data.batch_size=8", "--set", "data.workers=0",
                 "--set", "train.channels_last=false"]) == 0
    printed = capsys.readouterr().out
    assert "| labels | pretrained top-1 [95% CI] | random init top-1 [95% CI] | gain [95% CI, paired] |" in printed
    source = ckpt_io.load(source_ckpt)["encoder"]
    seed_all(0)
    random_init = build_encoder(ENC).backbone_state_dict()
    trainable = dict(build_encoder(ENC).model.named_parameters())
    pre, base = ckpt_io.load(out), ckpt_io.load(out / "baseline")
    for k in trainable:
        torch.testing.assert_close(pre["encoder"][k], source[k], rtol=0, atol=0)
        torch.testing.assert_close(base["encoder"][k], random_init[k], rtol=0, atol=0)
    assert max((source[k] - random_init[k]).abs().max().item() for k in trainable) > 0.01
    torch.testing.assert_close(pre["head"], base["head"], rtol=0, atol=0)  # the same fresh head
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "convssl-finetune/1" and report["init"] == "pretrained"
    assert report["labels"]["count"] == 100 and report["counts"] == {"train": 100, "val": 100, "classes": 10}
    assert 0 <= report["top1"] <= 1 and report["history"][-1]["step"] == 1
    baseline = json.loads((out / "baseline" / "report.json").read_text())
    assert baseline["init"] == "random" and baseline["checkpoint"] is None
    assert not (out / "baseline" / "labels").exists()  # the baseline read the same subset
    assert baseline["labels"] == report["labels"] and baseline["labels"]["path"] == str(out / "labels")
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["gain"] == pytest.approx(report["top1"] - baseline["top1"])
    assert (out / "report.md").read_text().startswith("# Fine-tuning of `custom_nets:small_convnet`")


def test_resume_equals_a_straight_run_and_weights_move(source_ckpt, val, tmp_path):
    cfg = small(max_steps=6)
    straight = finetune(source_ckpt, TRAIN, val, tmp_path / "straight", cfg, progress=False, trust=[ENC.spec])
    assert finetune(source_ckpt, TRAIN, val, tmp_path / "split", cfg, progress=False, stop_after=3, trust=[ENC.spec]) == {"finished": False}
    assert ckpt_io.load(tmp_path / "split")["step"] == 3
    resumed = finetune(source_ckpt, TRAIN, val, tmp_path / "split", cfg, progress=False, resume=True, trust=[ENC.spec])
    a, b = ckpt_io.load(tmp_path / "straight"), ckpt_io.load(tmp_path / "split")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=1e-6, msg=k)
    assert resumed["top1"] == pytest.approx(straight["top1"], abs=1e-9)
    source = ckpt_io.load(source_ckpt)["encoder"]
    moved = max((a["encoder"][k] - source[k]).abs().max().item() for k in source if source[k].is_floating_point())
    assert moved > 1e-3, "fine-tuning changed the encoder"
    lines = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 7))


def test_bad_input_is_one_clear_line(source_ckpt, val, tmp_path, capsys):
    common = ["finetune", "--ckpt", str(source_ckpt), *TRUST, "--val", val, "--out", str(tmp_path / "x")]
    assert main(common + ["--train", TRAIN, "--label-fraction", "1.5"]) == 2
    assert "label_fraction must be in (0, 1]" in capsys.readouterr().err
    assert main(common + ["--train", str(ROOT / "data/fmnist/unlabeled")]) == 2
    assert "unlabeled shards" in capsys.readouterr().err
    assert main(common + ["--train", TRAIN, "--set", "lr=0.1"]) == 2
    assert "unknown key finetune.lr" in capsys.readouterr().err
    (tmp_path / "x" / "checkpoints").mkdir(parents=True)
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "step": 1}, tmp_path / "x" / "checkpoints" / "step-00000001.pt")
    assert main(common + ["--train", TRAIN]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


@pytest.mark.slow  # two processes starting torch: ~35 s on the shared 2-core machine
def test_two_torchrun_ranks_fine_tune_together(source_ckpt, val, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29547",
           "-m", "convssl", "finetune", "--ckpt", str(source_ckpt), *TRUST, "--train", TRAIN, "--val", val,
           "--out", str(tmp_path / "ddp"), "--label-fraction", "0.1", "--max-steps", "2", "--quiet",
           "--set", "data.batch_size=8", "--set", "data.workers=1", "--set", "train.channels_last=false",
           "--device", "cpu"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = ckpt_io.load(tmp_path / "ddp")
    assert ckpt["step"] == 2 and isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2
    assert ckpt["data"] == {"per_rank_batches": 2, "per_rank_batch": 4, "world_size": 2}
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert report["world_size"] == 2 and report["labels"]["count"] == 100
