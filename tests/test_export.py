"""Export: the backbone loads into the plain torchvision model and computes the same maps."""

import hashlib
import json

import pytest
import torch
import torchvision

from convssl.cli import main
from convssl.config import to_dict
from convssl.data.config import DataConfig
from convssl.encoders import EncoderConfig, build_encoder
from convssl.errors import ConvsslError
from convssl.exports import ExportError, export_backbone
from convssl import checkpoint


def make_checkpoint(path, cfg: EncoderConfig, data: DataConfig):
    """A checkpoint in the documented format, with non-trivial weights and BN statistics."""
    torch.manual_seed(0)
    encoder = build_encoder(cfg)
    with torch.no_grad():
        for name, buf in encoder.model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    ckpt = {
        "format": checkpoint.FORMAT,
        "step": 42,
        "config": {"encoder": to_dict(cfg), "data": to_dict(data), "task": {"name": "rotation"},
                   "optim": {"name": "sgd"}, "train": {"seed": 0}},
        "encoder": encoder.backbone_state_dict(),
        "versions": {"torch": str(torch.__version__)},
    }
    return checkpoint.save_atomic(ckpt, path), encoder


@pytest.fixture(scope="module")
def resnet18_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    cfg = EncoderConfig(spec="torchvision:resnet18", input_size=32)
    data = DataConfig(size=32)
    return make_checkpoint(folder / "step-00000042.pt", cfg, data)


def layer4_of(model, x):
    got = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: got.setdefault("out", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return got["out"]


def test_resnet18_loads_into_torchvision_and_matches_encoder(resnet18_ckpt, tmp_path):
    path, encoder = resnet18_ckpt
    sidecar = export_backbone(path, tmp_path / "r18.pth")
    weights = torch.load(tmp_path / "r18.pth", weights_only=True)
    plain = torchvision.models.resnet18()
    missing, unexpected = plain.load_state_dict(weights, strict=False)
    assert unexpected == [] and sorted(missing) == ["fc.bias", "fc.weight"]
    plain.fc = torch.nn.Identity()
    plain.load_state_dict(weights, strict=True)  # strict on everything but the head
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = encoder.eval()(x)[-1]
    torch.testing.assert_close(layer4_of(plain.eval(), x), ours, rtol=0, atol=0)
    assert sidecar["not_exported"] == {"classifier head": ["fc.weight", "fc.bias"]}


def test_sidecar_has_the_documented_fields(resnet18_ckpt, tmp_path):
    path, encoder = resnet18_ckpt
    export_backbone(path, tmp_path)  # a folder: backbone.pth inside
    sidecar = json.loads((tmp_path / "backbone.pth.json").read_text())
    assert sidecar["format"] == "convssl-export/1" and sidecar["weights"] == "backbone.pth"
    assert sidecar["key_format"] == "torchvision" and sidecar["weights_format"] == "pth"
    assert sidecar["encoder"]["spec"] == "torchvision:resnet18"
    assert sidecar["encoder"]["config"]["input_size"] == 32
    assert [s["name"] for s in sidecar["stages"]] == ["layer1", "layer2", "layer3", "layer4"]
    assert [s["reduction"] for s in sidecar["stages"]] == [4, 8, 16, 32]
    assert sidecar["input"]["size"] == 32 and sidecar["input"]["channels"] == 3
    assert sidecar["input"]["mean"] == [0.485, 0.456, 0.406] and sidecar["input"]["std"] == [0.229, 0.224, 0.225]
    assert sidecar["recipe"]["task"] == {"name": "rotation"} and sidecar["checkpoint"]["step"] == 42
    assert sidecar["convssl_version"] and sidecar["architecture"]["loads_into_plain_model"] is True
    assert sidecar["architecture"]["builder"] == "torchvision.models.resnet18(weights=None)"
    assert sidecar["sha256"] == hashlib.sha256((tmp_path / "backbone.pth").read_bytes()).hexdigest()
    assert sidecar["num_params"] == sum(p.numel() for p in encoder.parameters())


def test_small_input_gray_export_loads_into_the_stem_changed_model(tmp_path):
    from convssl.encoders import build_bare_model

    cfg = EncoderConfig(spec="torchvision:resnet18", small_input=True, in_chans=1, input_size=32)
    path, encoder = make_checkpoint(tmp_path / "c.pt", cfg, DataConfig(size=32, channels=1, mean=(0.3,), std=(0.3,)))
    sidecar = export_backbone(path, tmp_path / "gray.pth", fmt="state_dict")
    arch = sidecar["architecture"]
    assert not arch["loads_into_plain_model"]
    assert arch["changed_from_plain"] == {"conv1.weight": {"exported": [64, 1, 3, 3], "plain": [64, 3, 7, 7]}}
    model = build_bare_model(EncoderConfig(**sidecar["encoder"]["config"]))
    model.fc = torch.nn.Identity()
    model.load_state_dict(torch.load(tmp_path / "gray.pth", weights_only=True), strict=True)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer4_of(model.eval(), x), encoder.eval()(x)[-1], rtol=0, atol=0)


def test_user_model_exports_as_state_dict_only(tmp_path):
    cfg = EncoderConfig(spec="custom_nets:small_convnet", in_chans=3, input_size=16)
    path, _ = make_checkpoint(tmp_path / "c.pt", cfg, DataConfig(size=16))
    sidecar = export_backbone(path, tmp_path / "u.pth", fmt=None, trust=[cfg.spec])  # None: the source's format
    assert sidecar["key_format"] == "state_dict"
    assert sidecar["not_exported"]["classifier head"] == ["15.weight", "15.bias"]
    with pytest.raises(ExportError, match="needs a 'torchvision:' encoder"):
        export_backbone(path, tmp_path / "v.pth", fmt="torchvision", trust=[cfg.spec])


def test_wrong_format_for_spec_is_a_clear_error(resnet18_ckpt, tmp_path):
    path, _ = resnet18_ckpt
    with pytest.raises(ExportError, match="--format timm needs a 'timm:' encoder.*use --format torchvision"):
        export_backbone(path, tmp_path / "x.pth", fmt="timm")
    with pytest.raises(ExportError, match="unknown export format"):
        export_backbone(path, tmp_path / "x.pth", fmt="onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConvsslError, match="does not exist"):
        export_backbone(tmp_path / "nope.pt", tmp_path / "x.pth")
    assert main(["export", "--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_mismatched_weights_fail_verification_and_write_nothing(resnet18_ckpt, tmp_path, capsys):
    ckpt = torch.load(resnet18_ckpt[0], weights_only=False)
    del ckpt["encoder"]["layer2.0.conv1.weight"]
    ckpt["encoder"]["layer9.weight"] = torch.zeros(3)
    path = checkpoint.save_atomic(ckpt, tmp_path / "c.pt")
    with pytest.raises(ExportError) as info:
        export_backbone(path, tmp_path / "x.pth")
    assert info.value.missing == ["layer2.0.conv1.weight"] and info.value.unexpected == ["layer9.weight"]
    assert main(["export", "--ckpt", str(path), "--out", str(tmp_path / "x.pth")]) == 1
    err = capsys.readouterr().err
    assert "missing: layer2.0.conv1.weight" in err and "unexpected: layer9.weight" in err
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "x.pth.json").exists()


def test_cli_export_from_run_directory(resnet18_ckpt, tmp_path, capsys):
    path, _ = resnet18_ckpt
    assert main(["export", "--ckpt", str(path.parent), "--out", str(tmp_path / "b.pth")]) == 0
    out = capsys.readouterr().out
    assert "strict=True" in out and "not exported: classifier head (fc.weight, fc.bias)" in out
    assert (tmp_path / "b.pth.json").is_file()


def test_safetensors(resnet18_ckpt, tmp_path):
    path, _ = resnet18_ckpt
    try:
        import safetensors.torch as st
    except ImportError:
        with pytest.raises(ExportError, match="pip install"):
            export_backbone(path, tmp_path / "b.safetensors", safetensors=True)
        return
    export_backbone(path, tmp_path / "b.safetensors", safetensors=True)
    plain = torchvision.models.resnet18()
    plain.fc = torch.nn.Identity()
    plain.load_state_dict(st.load_file(tmp_path / "b.safetensors"), strict=True)


# -- deployment files: ONNX and TorchScript ----------------------------------------------

def stage_maps_of(model, names, x):
    """The original model's outputs at the named modules (forward hooks), and their pooled last."""
    got = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o)) for n in names]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    maps = [got[n] for n in names]
    return maps + [maps[-1].mean(dim=(2, 3))]


def test_torchscript_equals_the_torchvision_model_on_several_batch_sizes(resnet18_ckpt, tmp_path, capsys):
    path, _ = resnet18_ckpt
    assert main(["export", "--ckpt", str(path), "--out", str(tmp_path / "r18.ts"), "--format", "torchscript"]) == 0
    assert "verified  max abs difference from torch" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "r18.ts.json").read_text())
    assert sidecar["format"] == "convssl-deploy/1" and sidecar["runtime"] == "torchscript"
    assert sidecar["input"]["mean"] == [0.485, 0.456, 0.406] and sidecar["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert [o["name"] for o in sidecar["outputs"]] == ["stage0_layer1", "stage1_layer2", "stage2_layer3",
                                                       "stage3_layer4", "pooled"]
    assert all(d <= 1e-4 for d in sidecar["verified"]["max_abs_diff"].values())
    plain = torchvision.models.resnet18()
    plain.load_state_dict(torch.load(path, weights_only=False)["encoder"], strict=False)
    plain.eval()
    loaded = torch.jit.load(str(tmp_path / "r18.ts"))
    for batch in (1, 3, 8):
        x = torch.randn(batch, 3, 32, 32)
        want = stage_maps_of(plain, ["layer1", "layer2", "layer3", "layer4"], x)
        got = loaded(x)
        assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
        assert max((g - w).abs().max().item() for g, w in zip(got, want)) <= 1e-4


def test_onnx_runs_in_onnxruntime_like_the_original_model(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx

    import custom_nets

    cfg = EncoderConfig(spec="custom_nets:small_convnet", in_chans=1, input_size=16)
    path, _ = make_checkpoint(tmp_path / "c.pt", cfg, DataConfig(size=16, channels=1, mean=(0.3,), std=(0.4,)))
    assert main(["export", "--ckpt", str(path), "--out", str(tmp_path / "net.onnx"), "--format", "onnx",
                 "--trust-encoder", cfg.spec]) == 0
    sidecar = json.loads((tmp_path / "net.onnx.json").read_text())
    assert sidecar["runtime"] == "onnx" and sidecar["input"]["mean"] == [0.3] and sidecar["input"]["std"] == [0.4]
    assert all(d <= 1e-4 for d in sidecar["verified"]["max_abs_diff"].values())
    graph_input = onnx.load(str(tmp_path / "net.onnx")).graph.input[0]
    assert graph_input.name == "image" and graph_input.type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    plain = custom_nets.small_convnet(in_chans=1)
    plain.load_state_dict(torch.load(path, weights_only=False)["encoder"], strict=False)
    plain.eval()
    stages = [o["stage"] for o in sidecar["outputs"] if "stage" in o]
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 8):
        x = torch.randn(batch, 1, 16, 16)
        want = stage_maps_of(plain, stages, x)
        got = session.run(None, {"image": x.numpy()})
        assert [g.shape for g in got] == [tuple(w.shape) for w in want]
        assert max(float((torch.from_numpy(g) - w).abs().max()) for g, w in zip(got, want)) <= 1e-4


def test_torchscript_of_an_encoder_that_needs_hooks(tmp_path):
    from convssl.exports import export_torchscript

    import custom_nets

    cfg = EncoderConfig(spec="custom_nets:TwoPath", in_chans=3, input_size=16)
    path, encoder = make_checkpoint(tmp_path / "c.pt", cfg, DataConfig(size=16))
    assert encoder.mode == "hooks"
    sidecar = export_torchscript(path, tmp_path, trust=[cfg.spec])
    assert sidecar["paths"]["file"] == str(tmp_path / "backbone.torchscript.pt")
    plain = custom_nets.TwoPath()
    plain.load_state_dict(torch.load(path, weights_only=False)["encoder"], strict=False)
    x = torch.randn(4, 3, 16, 16)
    want = stage_maps_of(plain.eval(), encoder.stage_names, x)
    got = torch.jit.load(sidecar["paths"]["file"])(x)
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) <= 1e-4


def test_safetensors_with_a_deployment_format_is_refused(resnet18_ckpt, tmp_path, capsys):
    path, _ = resnet18_ckpt
    assert main(["export", "--ckpt", str(path), "--out", str(tmp_path / "x"), "--format", "onnx", "--safetensors"]) == 2
    assert "--safetensors applies to weight exports" in capsys.readouterr().err
