"""encoder.init: starting weights from a file, a checkpoint or a local cache (continued pretraining).

Real weight files written here, real runs; the channel adaptation against its formula
computed independently (timm's adapt_input_conv rule, written out by index).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from convssl.encoders import EncoderConfig, build_bare_model, build_encoder
from convssl.encoders.from_checkpoint import load_encoder
from convssl.encoders.init_weights import apply_init
from convssl.errors import ConfigError, ConvsslError
from convssl import checkpoint as ckpt_io

sys.path.insert(0, str(Path(__file__).parent))
from test_intervals import subset_shards  # noqa: E402
from test_reliability import UNLABELED, tiny_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FMNIST = ROOT / "data" / "fmnist"
SPEC = "custom_nets:small_convnet"


def small(in_chans: int = 1, seed: int = 0, **extra):
    torch.manual_seed(seed)
    return build_encoder(EncoderConfig(spec=SPEC, in_chans=in_chans, input_size=16, **extra))


def full_model_weights(in_chans: int, seed: int) -> dict:
    """The original model's state dict, classifier head included (as torchvision files are)."""
    torch.manual_seed(seed)
    return build_bare_model(EncoderConfig(spec=SPEC, in_chans=in_chans, input_size=16)).state_dict()


def test_weight_file_loads_bit_exactly_head_dropped(tmp_path):
    weights = full_model_weights(1, seed=3)
    assert "15.weight" in weights  # the head: dropped on load
    path = tmp_path / "w.pth"
    torch.save(weights, path)
    encoder = small(seed=4)
    record = apply_init(encoder, str(path), note=pytest.fail)  # nothing to adapt: no note
    loaded = encoder.model.state_dict()
    assert set(loaded) == set(weights) - {"15.weight", "15.bias"}
    for k, v in loaded.items():
        assert torch.equal(v, weights[k]), k
    assert record["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert encoder.init_source == record and record["source"] == str(path)


def test_safetensors_and_checkpoint_sources_load_the_same_tensors(tmp_path):
    save_file = pytest.importorskip("safetensors.torch").save_file
    weights = {k: v for k, v in full_model_weights(1, seed=5).items() if not k.startswith("15.")}
    save_file(weights, str(tmp_path / "w.safetensors"))
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "encoder": weights, "config": {}},
                        tmp_path / "run" / "checkpoints" / "step-00000003.pt")
    for source in (tmp_path / "w.safetensors", tmp_path / "run"):
        encoder = small(seed=6)
        record = apply_init(encoder, str(source))
        for k, v in encoder.model.state_dict().items():
            assert torch.equal(v, weights[k]), (source, k)
    assert record["path"].endswith("step-00000003.pt")


def test_wrong_and_missing_keys_are_named(tmp_path):
    weights = full_model_weights(1, seed=0)
    weights["3.weigth"] = weights.pop("3.weight")
    torch.save(weights, tmp_path / "w.pth")
    with pytest.raises(ConvsslError) as err:
        apply_init(small(), str(tmp_path / "w.pth"))
    message = str(err.value)
    assert "missing 1 key(s): 3.weight" in message and "unexpected 1 key(s): 3.weigth" in message
    assert "\n" not in message


def test_other_shapes_name_the_key_and_both_shapes(tmp_path):
    weights = full_model_weights(1, seed=0)
    weights["4.weight"] = torch.ones(33)
    torch.save(weights, tmp_path / "w.pth")
    with pytest.raises(ConvsslError, match=r"4\.weight has shape \[33\] in the file and \[32\] in the encoder"):
        apply_init(small(), str(tmp_path / "w.pth"))


@pytest.mark.parametrize("in_chans", [1, 2, 4, 7])
def test_first_conv_channels_adapted_as_timm_does(tmp_path, in_chans):
    rgb = full_model_weights(3, seed=7)
    torch.save(rgb, tmp_path / "rgb.pth")
    notes = []
    encoder = small(in_chans=in_chans, seed=8)
    record = apply_init(encoder, str(tmp_path / "rgb.pth"), note=notes.append)
    w = rgb["0.weight"]  # [16, 3, 3, 3]
    if in_chans == 1:
        expected = w[:, 0:1] + w[:, 1:2] + w[:, 2:3]
    else:  # channels 0, 1, 2, 0, 1, 2, ... cut to in_chans, times 3 / in_chans
        expected = torch.stack([w[:, c % 3] for c in range(in_chans)], dim=1) * (3 / in_chans)
    got = encoder.model.state_dict()["0.weight"]
    assert got.shape == (16, in_chans, 3, 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert record["adapted"] == ["0.weight"] and len(notes) == 1 and "adapt_input_conv" in notes[0]
    for k, v in encoder.model.state_dict().items():  # everything else as in the file
        if k != "0.weight":
            assert torch.equal(v, rgb[k]), k


def test_torchvision_weights_come_from_the_local_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = EncoderConfig(spec="torchvision:resnet18", in_chans=1, input_size=32)
    place = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    encoder = build_encoder(cfg)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        apply_init(encoder, "torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert time.perf_counter() - started < 5  # no download, no hang
    message = str(err.value)
    assert "\n" not in message and f"at {place}" in message and "never downloads" in message
    with pytest.raises(ConfigError, match="no weights 'ResNet18_Weights.NOPE'"):
        apply_init(build_encoder(cfg), "torchvision:ResNet18_Weights.NOPE")
    # the file placed where the message says: a torchvision-format file (3 channels, fc head)
    import torchvision

    torch.manual_seed(0)
    place.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), place)
    encoder = build_encoder(cfg)
    record = apply_init(encoder, "torchvision:ResNet18_Weights.IMAGENET1K_V1", note=lambda _: None)
    assert record["path"] == str(place) and record["adapted"] == ["conv1.weight"]
    assert torch.equal(encoder.model.state_dict()["layer4.1.bn2.weight"], torch.load(place)["layer4.1.bn2.weight"])


def test_unknown_init_sources_are_one_line(tmp_path):
    for init, pattern in ((str(tmp_path / "nope.pth"), "does not exist"),
                          ("timm:resnet18", "timm:pretrained"),
                          ("timm:pretrained", "needs a timm encoder")):
        with pytest.raises(ConfigError, match=pattern) as err:
            apply_init(small(), init)
        assert "\n" not in str(err.value)


def test_run_from_a_weight_file_records_it_and_probes_against_it(tmp_path, capsys):
    """Continued pretraining from a weight file, then probe --baseline weights:SAME_FILE:
    the checkpoint, config.yaml and the export record the source and its sha256, and the
    probe reports the paired difference against the starting weights."""
    from convssl.cli import main
    from convssl.train.trainer import pretrain

    start = tmp_path / "start.pth"
    torch.save(full_model_weights(1, seed=11), start)
    recipe = tiny_recipe(encoder={"init": str(start)}, train={"max_steps": 4})
    pretrain(recipe, str(UNLABELED), tmp_path / "run", progress=False)
    ckpt = ckpt_io.load(tmp_path / "run")
    sha = __import__("hashlib").sha256(start.read_bytes()).hexdigest()
    assert ckpt["init"]["sha256"] == sha and ckpt["config"]["encoder"]["init"] == str(start)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["run"]["init"]["sha256"] == sha
    # the first step starts from the file: step 0's weights differ from it only by training
    assert any(not torch.equal(v, torch.load(start)[k]) for k, v in ckpt["encoder"].items())

    sidecar = main(["export", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "b.pth"),
                    "--format", "state_dict", "--trust-encoder", SPEC])
    assert sidecar == 0
    assert json.loads((tmp_path / "b.pth.json").read_text())["init"]["sha256"] == sha

    train = subset_shards(FMNIST / "train", tmp_path / "train", 200)
    val = subset_shards(FMNIST / "test", tmp_path / "val", 200)
    capsys.readouterr()
    assert main(["probe", "--ckpt", str(tmp_path / "run"), "--train", train, "--val", val, "--out",
                 str(tmp_path / "probe"), "--workers", "0", "--max-dims", "64", "--quiet", "--no-knn",
                 "--resamples", "1000", "--baseline", f"weights:{start}", "--trust-encoder", SPEC]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "probe" / "report.json").read_text())
    (baseline,) = report["baselines"]
    assert baseline["source"]["sha256"] == sha
    assert len(report["verdicts"]) == len(report["stages"]) and all(v in out for v in report["verdicts"])
    assert "start.pth" in report["verdicts"][0]


def test_resume_keeps_the_init_record_and_does_not_read_the_file_again(tmp_path):
    from convssl.train.trainer import pretrain

    start = tmp_path / "start.pth"
    torch.save(full_model_weights(1, seed=12), start)
    recipe = tiny_recipe(encoder={"init": str(start)}, train={"max_steps": 4})
    pretrain(recipe, str(UNLABELED), tmp_path / "run", progress=False, stop_after=2)
    record = ckpt_io.load(tmp_path / "run")["init"]
    start.unlink()  # moved away: the run continues from its checkpoint
    pretrain(recipe, str(UNLABELED), tmp_path / "run", progress=False, resume=True)
    ckpt = ckpt_io.load(tmp_path / "run")
    assert ckpt["step"] == 4 and ckpt["init"] == record


def test_old_checkpoints_without_init_still_load(tmp_path):
    from convssl.config import to_dict

    encoder = small(seed=1)
    config = to_dict(encoder.config)
    del config["init"]
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "encoder": encoder.backbone_state_dict(),
                         "config": {"encoder": config, "data": {}}}, tmp_path / "old.pt")
    loaded, _ = load_encoder(tmp_path / "old.pt", trust=[SPEC])
    assert loaded.config.init == ""


def test_timm_pretrained_from_the_local_caches_only(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty caches, as on a fresh machine
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    encoder = build_encoder(EncoderConfig(spec="timm:resnet18", in_chans=1, input_size=32))
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        apply_init(encoder, "timm:pretrained")
    assert time.perf_counter() - started < 5  # a cache lookup, no download
    message = str(err.value)
    assert "\n" not in message and "never downloads" in message and "huggingface.co/timm/resnet18" in message


def test_init_on_the_command_line_is_one_line_when_the_file_is_missing(tmp_path, capsys):
    from convssl.cli import main

    code = main(["pretrain", "--recipe", str(ROOT / "recipes" / "rotation_resnet18_small.yaml"), "--data",
                 str(UNLABELED), "--out", str(tmp_path / "run"), "--init", str(tmp_path / "nope.pth"),
                 "--max-steps", "1", "--quiet", "--set", f"encoder.spec={SPEC}", "--set", "encoder.small_input=false",
                 "--set", "data.size=16", "--set", "data.workers=0", "--set", "optim.warmup_epochs=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nope.pth' does not exist" in err, err
    assert not ckpt_io.latest(tmp_path / "run" / "checkpoints")


def test_probe_encoder_with_init_probes_those_weights(tmp_path, capsys):
    """probe --encoder SPEC --init FILE probes the file's weights: the same figures as the file
    probed as a --baseline weights: of a random-init encoder (one protocol, one set of images)."""
    from convssl.cli import main

    start = tmp_path / "start.pth"
    torch.save(full_model_weights(1, seed=13), start)
    train = subset_shards(FMNIST / "train", tmp_path / "train", 150)
    val = subset_shards(FMNIST / "test", tmp_path / "val", 150)
    common = ["--encoder", SPEC, "--in-chans", "1", "--size", "16", "--train", train, "--val", val, "--workers", "0", "--max-dims", "64",
              "--quiet", "--no-knn", "--resamples", "1000", "--mean", "0.286", "--std", "0.353"]
    assert main(["probe", *common, "--init", str(start), "--out", str(tmp_path / "a")]) == 0
    assert main(["probe", *common, "--baseline", f"weights:{start}", "--out", str(tmp_path / "b")]) == 0
    assert f"from {start}" in capsys.readouterr().out
    a = json.loads((tmp_path / "a" / "report.json").read_text())["stages"]
    (b,) = json.loads((tmp_path / "b" / "report.json").read_text())["baselines"]
    assert [s["linear_top1"] for s in a] == [s["linear_top1"] for s in b["stages"]]
