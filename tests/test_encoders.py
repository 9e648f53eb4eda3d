"""Encoder adapter: discovered stages match the known layouts, keys stay the model's."""

import pytest
import torch
import torch.nn as nn
import torchvision

from convssl.encoders import Encoder, build_encoder
from convssl.errors import EncoderError


def hooked_outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    """Independent reference: the original model's own forward, outputs grabbed by hooks."""
    got = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: got.setdefault(n, o)) for n in names]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [got[n] for n in names]


KNOWN = {
    "resnet18": (["layer1", "layer2", "layer3", "layer4"], [64, 128, 256, 512], [4, 8, 16, 32]),
    "resnet50": (["layer1", "layer2", "layer3", "layer4"], [256, 512, 1024, 2048], [4, 8, 16, 32]),
    "convnext_tiny": (["features.1", "features.3", "features.5", "features.7"], [96, 192, 384, 768], [4, 8, 16, 32]),
    "mobilenet_v3_large": (
        ["features.1", "features.3", "features.6", "features.12", "features.16"],
        [16, 24, 40, 112, 960],
        [2, 4, 8, 16, 32],
    ),
}


@pytest.mark.parametrize("name", list(KNOWN))
def test_torchvision_stages_and_keys(name):
    torch.manual_seed(0)
    enc = build_encoder(f"torchvision:{name}", input_size=64)
    names, channels, reductions = KNOWN[name]
    assert enc.stage_names == names
    assert enc.channels == channels
    assert enc.reductions == reductions
    assert enc.mode == "chain"

    original = torchvision.models.get_model(name, weights=None)
    head = {k for k in original.state_dict() if k.split(".")[0] in ("fc", "classifier")}
    assert head, "the classifier head has parameters"
    assert set(enc.model.state_dict()) == set(original.state_dict()) - head

    original.load_state_dict(enc.model.state_dict(), strict=False)
    original.eval(), enc.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = enc(x)
    for m, ref, r, c in zip(maps, hooked_outputs(original, names, x), reductions, channels):
        assert m.shape == (2, c, 64 // r, 64 // r)
        torch.testing.assert_close(m, ref)


def test_small_input_stem_and_in_chans():
    enc = build_encoder("torchvision:resnet18", small_input=True, input_size=32, in_chans=1)
    assert enc.reductions == [1, 2, 4, 8]
    conv1 = enc.model.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.in_channels == 1
    assert isinstance(enc.model.maxpool, nn.Identity)
    assert set(enc.model.state_dict()) == {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}
    maps = enc(torch.randn(3, 1, 32, 32))
    assert [tuple(m.shape[-2:]) for m in maps] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert enc.pool(torch.randn(3, 1, 32, 32)).shape == (3, 512)


def test_custom_sequential_from_spec():
    enc = build_encoder("custom_nets:small_convnet", input_size=32, in_chans=1)
    # the single-conv leading group (0-2) folds into the next stage; head 13-15 dropped
    assert enc.stage_names == ["8", "12"]
    assert enc.channels == [32, 64]
    assert enc.reductions == [2, 4]
    assert enc.head == ["13", "14", "15"]
    assert "15.weight" not in enc.model.state_dict()
    assert enc.model[0].in_channels == 1


def test_non_chain_model_falls_back_to_hooks():
    from custom_nets import TwoPath

    torch.manual_seed(0)
    model = TwoPath()
    reference = TwoPath()
    reference.load_state_dict(model.state_dict())
    enc = Encoder(model, input_size=32)
    assert enc.mode == "hooks"  # running a, b, c in sequence would drop the skip
    assert enc.stage_names == ["a", "b", "c"] and enc.reductions == [1, 2, 4]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = enc(x)
    for m, ref in zip(maps, hooked_outputs(reference, enc.stage_names, x)):
        torch.testing.assert_close(m, ref)


def test_explicit_stages():
    enc = build_encoder("torchvision:resnet18", input_size=64, stages=("layer3", "layer4"))
    assert enc.stage_names == ["layer3", "layer4"] and enc.reductions == [16, 32]


def test_timm_model_when_present():
    timm = pytest.importorskip("timm")
    enc = build_encoder("timm:resnet18", input_size=64)
    assert enc.stage_names == ["layer1", "layer2", "layer3", "layer4"]
    original = timm.create_model("resnet18", pretrained=False)
    assert set(enc.model.state_dict()) == {k for k in original.state_dict() if not k.startswith("fc.")}


@pytest.mark.parametrize(
    "spec, kwargs, message",
    [
        ("torchvision:resnet19", {}, "no classification model"),
        ("resnet18", {}, "has no source"),
        ("no_such_pkg.mod:net", {}, "cannot import"),
        ("torchvision:convnext_tiny", {"small_input": True, "input_size": 32}, "ResNet-family"),
    ],
)
def test_bad_specs_get_clear_errors(spec, kwargs, message):
    with pytest.raises(EncoderError, match=message):
        build_encoder(spec, **kwargs)


def test_bad_inputs_get_clear_errors():
    enc = build_encoder("torchvision:resnet18", input_size=64)
    with pytest.raises(EncoderError, match="3-channel"):
        enc(torch.randn(1, 1, 64, 64))
    with pytest.raises(EncoderError, match="smaller than the encoder's total reduction 32"):
        enc(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("size, small_input, lost, smallest", [
    (4, False, "layer1, layer2, layer3, layer4", 32),  # 2x2 after conv1, 1x1 from the max-pool on
    (1, False, "layer1, layer2, layer3", 32),  # all 1x1 from conv1 on: one merged stage ending at layer4
    (16, False, "layer3", 32),  # layer3 and layer4 both 1x1: merged into one stage
    (4, True, "layer3", 8),  # small-input stem: layer3 and layer4 both 1x1
])
def test_a_size_at_which_resnet_stages_collapse_is_refused(size, small_input, lost, smallest):
    """ResNet-18's stages are layer1-4 at any size where each has its own resolution; at a
    size where maps shrink to 1x1 they merge or fall into the head, which is dropped."""
    with pytest.raises(EncoderError, match=rf"input size {size} px is too small .*stage\(s\) {lost} shrink.*>= {smallest}"):
        build_encoder("torchvision:resnet18", in_chans=1, input_size=size, small_input=small_input)
    fine = build_encoder("torchvision:resnet18", in_chans=1, input_size=smallest, small_input=small_input)
    assert fine.stage_names == ["layer1", "layer2", "layer3", "layer4"]


def test_sizes_that_keep_every_stage_and_fixed_size_models_still_build():
    # layer4 at 1x1 is its own stage at 32 px: nothing merged, nothing refused
    assert build_encoder("torchvision:resnet18", input_size=32).reductions == [4, 8, 16, 32]

    class FixedSize(nn.Module):  # cannot run at the reference size: no comparison, no refusal
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)

        def forward(self, x):
            assert x.shape[-1] == 2, "built for 2 px"
            return self.conv2(self.conv(x))

    assert len(Encoder(FixedSize(), input_size=2, in_chans=1).stages) == 1


def test_a_pretrain_at_4_px_stops_before_training(tmp_path, capsys):
    from pathlib import Path

    from convssl.cli import main

    root = Path(__file__).resolve().parents[1]
    argv = ["pretrain", "--recipe", str(root / "recipes/rotation_resnet18_small.yaml"), "--data",
            str(root / "data/fmnist/unlabeled"), "--out", str(tmp_path / "run"), "--max-steps", "2", "--quiet",
            "--set", "data.size=4", "--set", "encoder.small_input=false", "--set", "optim.warmup_epochs=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "input size 4 px is too small for torchvision:resnet18" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()
