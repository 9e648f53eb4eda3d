"""No code from a checkpoint: an encoder spec stored in a checkpoint is data, never a command.

A checkpoint holding only tensors and strings passes ``weights_only=True``, but its recipe
names the encoder builder; a ``package.module:callable`` spec there would be imported and
called by every command that rebuilds the encoder. Each such command is run here on a
checkpoint whose spec is ``subprocess:getoutput`` with a shell command as its argument.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from convssl.cli import main
from convssl.encoders import EncoderConfig, build_encoder
from convssl.encoders.from_checkpoint import encoder_config, load_encoder
from convssl.errors import ConvsslError
from convssl import checkpoint as ckpt_io
from convssl.train.trainer import pretrain

ROOT = Path(__file__).resolve().parents[1]
FMNIST = ROOT / "data" / "fmnist"
USER_SPEC = "custom_nets:small_convnet"


def _one_step_checkpoint(tmp_path: Path) -> Path:
    from test_reliability import tiny_recipe

    summary = pretrain(tiny_recipe(train={"max_steps": 1}), str(FMNIST / "unlabeled"), tmp_path / "run",
                       progress=False, device="cpu")
    return Path(summary["checkpoint"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(an honest checkpoint of a user encoder, the same with a shell command as its encoder, the marker)."""
    tmp = tmp_path_factory.mktemp("trust")
    honest = _one_step_checkpoint(tmp)
    marker = tmp / "PWNED"
    ckpt = torch.load(honest, weights_only=True)
    ckpt["config"]["encoder"] = {**ckpt["config"]["encoder"], "spec": "subprocess:getoutput",
                                 "kwargs": {"cmd": f"touch {marker}"}}
    evil = tmp / "evil.pt"
    torch.save(ckpt, evil)
    # The payload is live: rebuilding the stored encoder config as convssl did runs the command.
    with pytest.raises(ConvsslError):
        build_encoder(EncoderConfig(**{**ckpt["config"]["encoder"], "stages": ()}))
    assert marker.exists(), "the test payload did not run when built directly"
    marker.unlink()
    return honest, evil, marker


def _commands(ckpt: Path, tmp: Path) -> dict[str, list]:
    labeled = ["--train", FMNIST / "train", "--val", FMNIST / "test"]
    return {
        "probe": ["probe", "--ckpt", ckpt, *labeled, "--out", tmp / "probe", "--quiet", "--workers", "0"],
        "export pth": ["export", "--ckpt", ckpt, "--out", tmp / "b.pth", "--format", "state_dict"],
        "export onnx": ["export", "--ckpt", ckpt, "--out", tmp / "b.onnx", "--format", "onnx"],
        "export torchscript": ["export", "--ckpt", ckpt, "--out", tmp / "b.ts", "--format", "torchscript"],
        "finetune": ["finetune", "--ckpt", ckpt, *labeled, "--out", tmp / "ft", "--max-steps", "1", "--quiet"],
        "finetune --baseline": ["finetune", "--ckpt", ckpt, *labeled, "--out", tmp / "ftb", "--max-steps", "1",
                                "--quiet", "--baseline"],
        "embed": ["embed", "--ckpt", ckpt, "--data", FMNIST / "test", "--out", tmp / "map", "--method", "pca",
                  "--workers", "0"],
    }


def test_a_checkpoint_naming_a_command_runs_nothing_in_any_command(checkpoints, tmp_path, capsys):
    _, evil, marker = checkpoints
    for name, argv in _commands(evil, tmp_path).items():
        assert main([str(a) for a in argv]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, (name, err)
        assert "'subprocess:getoutput'" in err and "nothing was run" in err, (name, err)
        assert "--trust-encoder subprocess:getoutput" in err, (name, err)
        assert not marker.exists(), f"{name} ran the command the checkpoint named"


def test_python_api_refuses_it_too(checkpoints, tmp_path):
    import convssl
    from convssl.eval.probe import checkpoint_input

    _, evil, marker = checkpoints
    for call in (lambda: load_encoder(evil), lambda: checkpoint_input(evil),
                 lambda: convssl.export(evil, tmp_path / "b.pth", format="state_dict"),
                 lambda: convssl.probe(evil, str(FMNIST / "train"), str(FMNIST / "test"), tmp_path / "p")):
        with pytest.raises(ConvsslError, match="nothing was run"):
            call()
    assert not marker.exists()


def test_a_user_encoder_is_rebuilt_only_when_the_user_names_it(checkpoints, tmp_path, capsys):
    honest, _, _ = checkpoints
    out = tmp_path / "b.pth"
    assert main(["export", "--ckpt", str(honest), "--out", str(out), "--format", "state_dict"]) == 2
    assert f"--trust-encoder {USER_SPEC}" in capsys.readouterr().err and not out.exists()
    assert main(["export", "--ckpt", str(honest), "--out", str(out), "--format", "state_dict",
                 "--trust-encoder", USER_SPEC]) == 0
    exported = torch.load(out, weights_only=True)
    stored = ckpt_io.load(honest)["encoder"]
    assert exported.keys() <= stored.keys() and all(torch.equal(v, stored[k]) for k, v in exported.items())
    # trusting another spec does not trust this one
    with pytest.raises(ConvsslError, match="nothing was run"):
        load_encoder(honest, trust=["custom_nets:gn_convnet"])
    encoder, _ = load_encoder(honest, trust=[USER_SPEC])
    assert all(torch.equal(v, encoder.model.state_dict()[k]) for k, v in stored.items())


@pytest.mark.parametrize("kwargs", [{"weights": "IMAGENET1K_V1"}, {"pretrained": True},
                                    {"checkpoint_path": "/tmp/x.pth"}])
def test_builtin_specs_rebuild_but_never_load_weights_a_file_names(kwargs):
    ckpt = {"path": "x.pt", "config": {"encoder": {"spec": "torchvision:resnet18", "kwargs": kwargs}}}
    with pytest.raises(ConvsslError, match="load weights from elsewhere"):
        encoder_config(ckpt)
    plain = encoder_config({"path": "x.pt", "config": {"encoder": {"spec": "timm:resnet18", "in_chans": 1}}})
    assert plain.spec == "timm:resnet18" and plain.in_chans == 1
