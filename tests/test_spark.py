"""SparK task: loss against an explicit loop, no leakage into predictions or loss terms,
export into plain torchvision, learning on real Fashion-MNIST images.

Legend: B batch, C channels, p patch size, gh/gw patch grid; masks bool, True = visible.
"""

import copy
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image

from convssl.data.config import DataConfig
from convssl.encoders import Encoder, build_bare_model, build_encoder
from convssl.errors import ConfigError, EncoderError
from convssl.tasks.registry import TaskSpec, build_task
from convssl.sparse import random_patch_mask, upsample_mask
from convssl.sparse.layers import SparseLayer
from convssl.tasks.spark import SparK, masked_patch_loss

SHARD = Path(__file__).resolve().parents[1] / "data" / "fmnist" / "unlabeled" / "shard-000000.tar"
FMNIST = DataConfig(size=32, channels=1, mean=(0.286,), std=(0.353,))
RGB64 = DataConfig(size=64, channels=3)


def fmnist_images(n: int) -> torch.Tensor:
    """The first n embedded Fashion-MNIST images, zero-padded 28 -> 32 px: uint8 [n, 1, 32, 32]."""
    imgs = []
    with tarfile.open(SHARD) as tar:
        for member in tar:
            if member.name.endswith(".png"):
                imgs.append(np.array(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("L")))
            if len(imgs) == n:
                break
    x = torch.from_numpy(np.stack(imgs))[:, None]
    return nn.functional.pad(x, (2, 2, 2, 2))


def small_spark(width=64, **cfg):
    enc = build_encoder("torchvision:resnet18", small_input=True, input_size=32, in_chans=1)
    return SparK(enc, SparK.Config(decoder_width=width, **cfg), FMNIST)


def loop_loss(pred, x, mask, p):
    """Independent reference: explicit loops over images and patches."""
    B, C, H, W = x.shape
    total, count = 0.0, 0
    for b in range(B):
        for i in range(H // p):
            for j in range(W // p):
                if mask[b, 0, i, j]:
                    continue
                t = x[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p].double().flatten()
                q = pred[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p].double().flatten()
                mean = t.sum() / t.numel()
                var = ((t - mean) ** 2).sum() / (t.numel() - 1)
                target = (t - mean) / torch.sqrt(var + 1e-6)
                total += ((q - target) ** 2).sum() / t.numel()
                count += 1
    return total / count


@pytest.mark.parametrize("C,p", [(1, 8), (3, 4)])
def test_loss_equals_explicit_loop(C, p):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, C, 4 * p, 4 * p, generator=g) * 2 + 0.5
    pred = torch.randn(x.shape, generator=g)
    mask = random_patch_mask(3, (4, 4), 0.6, generator=g)
    loss, err_BN = masked_patch_loss(pred, x, mask, p)
    torch.testing.assert_close(loss.double(), loop_loss(pred, x, mask, p), atol=1e-5, rtol=1e-5)
    assert err_BN.shape == (3, 16)


LEAK_ENCODERS = {
    "resnet18": (lambda: build_encoder("torchvision:resnet18", input_size=64), RGB64),
    "resnet18_small": (lambda: build_encoder("torchvision:resnet18", small_input=True, input_size=32, in_chans=1), FMNIST),
    "convnext_tiny": (lambda: build_encoder("torchvision:convnext_tiny", input_size=64), RGB64),
    "mobilenet_v3_large": (lambda: build_encoder("torchvision:mobilenet_v3_large", input_size=64), RGB64),
    "efficientnet_b0": (lambda: build_encoder("torchvision:efficientnet_b0", input_size=64), RGB64),
    "regnet_y_400mf": (lambda: build_encoder("torchvision:regnet_y_400mf", input_size=64), RGB64),
    "custom_sequential": (lambda: Encoder(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
    ), input_size=64), RGB64),
}


@pytest.mark.parametrize("name", list(LEAK_ENCODERS))
def test_masked_pixels_change_no_prediction_and_no_other_loss_term(name):
    make, data = LEAK_ENCODERS[name]
    task = SparK(make(), SparK.Config(decoder_width=64), data).train()
    B, S, p = 2, data.size, task.patch_size
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (B, data.channels, S, S), dtype=torch.uint8, generator=g)
    mask = random_patch_mask(B, task.grid_hw, 0.5, generator=g)
    b, i, j = [int(v) for v in (~mask).nonzero()[0][[0, 2, 3]]]  # one masked patch
    changed = img.clone()
    changed[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p] = torch.randint(
        0, 256, (data.channels, p, p), dtype=torch.uint8, generator=g)

    def terms(im):
        torch.manual_seed(0)  # same stochastic depth / dropout draws
        x, m, _ = task._inputs({"img": [im], "mask": mask})
        with torch.no_grad():
            pred = task.reconstruct(x, m)
        return pred, masked_patch_loss(pred, x, m, p)[1]

    (pred_a, err_a), (pred_b, err_b) = terms(img), terms(changed)
    assert pred_a.shape == (B, data.channels, S, S)
    assert torch.equal(pred_a, pred_b), "masked pixels leaked into the reconstruction"
    n = i * task.grid_hw[1] + j
    diff = (err_a - err_b).abs()
    assert diff[b, n] > 0  # its own target changed
    diff[b, n] = 0
    assert diff.max() == 0, "a loss term other than the changed patch's moved"


def test_densify_norm_auto_picks_ln_for_convnext_bn_otherwise():
    assert SparK(build_encoder("torchvision:convnext_tiny", input_size=64), SparK.Config(decoder_width=64),
                 RGB64).densify.norm_kind == "ln"
    assert small_spark().densify.norm_kind == "bn"


def test_decoder_covers_finest_reductions_1_2_4():
    small = small_spark()  # reductions 1, 2, 4, 8
    assert small._levels == [0, 1, 2, 3] and len(small.decoder.blocks) == 3
    mob = SparK(build_encoder("torchvision:mobilenet_v3_large", input_size=64), SparK.Config(decoder_width=64), RGB64)
    assert mob._levels == [0, 1, 2, 3, 4] and len(mob.decoder.blocks) == 5  # reductions 2..32
    r18 = SparK(build_encoder("torchvision:resnet18", input_size=64), SparK.Config(decoder_width=64), RGB64)
    assert r18._levels == [0, 1, 2, 3] and len(r18.decoder.blocks) == 5  # reductions 4..32
    for task in (small, mob, r18):
        out = task({"img": [torch.randint(0, 256, (2, task.data.channels, task.data.size, task.data.size),
                                          dtype=torch.uint8)]})
        assert torch.isfinite(out["loss"])


def test_weights_load_into_plain_torchvision_resnet18():
    enc = build_encoder("torchvision:resnet18", input_size=64)
    task = SparK(enc, SparK.Config(decoder_width=64), RGB64)
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    task({"img": [torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)]})["loss"].backward()
    opt.step()

    sd = task.encoder.backbone_state_dict()
    ref = torchvision.models.resnet18()
    assert set(sd) == {k for k in ref.state_dict() if not k.startswith("fc.")}
    ref.fc = nn.Identity()
    ref.load_state_dict(sd, strict=True)
    ref.eval(), task.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # the trained weights arrived: the plain model's features == the encoder's
        want = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
        torch.testing.assert_close(task.encoder(x)[-1], want)
        # and the encoder is still the plain torchvision model: no layer class was swapped
        assert not any(isinstance(m, SparseLayer) for m in task.encoder.model.modules())


def test_small_input_weights_load_into_the_bare_model():
    task = small_spark()
    bare = build_bare_model(task.encoder.config)
    missing, unexpected = bare.load_state_dict(task.encoder.backbone_state_dict(), strict=False)
    assert missing == ["fc.weight", "fc.bias"] and unexpected == []


def test_adamw_steps_lower_the_loss_on_fashion_mnist():
    torch.manual_seed(0)
    task = small_spark(width=64).train()
    imgs = fmnist_images(16)
    eval_mask = random_patch_mask(16, task.grid_hw, 0.6, generator=torch.Generator().manual_seed(1))

    def eval_loss():
        saved = copy.deepcopy(task.state_dict())  # keep BN running statistics unchanged
        with torch.no_grad():
            loss = task({"img": [imgs], "mask": eval_mask})["loss"].item()
        task.load_state_dict(saved)
        return loss

    before = eval_loss()
    opt = torch.optim.AdamW(task.parameters(), lr=2e-3, weight_decay=0.05)
    for _ in range(6):
        loss = task({"img": [imgs]})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert 0.3 < before < 1.5  # near 1 (below: flat background patches are easy)
    assert after < 0.9 * before, (before, after)


def test_pictures_is_a_3_channel_grid_in_0_1_and_leaves_buffers_alone():
    task = small_spark().train()
    before = {k: v.clone() for k, v in task.state_dict().items()}
    pic = task.pictures({"img": [fmnist_images(4)]})
    assert pic.shape == (3, 4 * 32 + 5 * 2, 4 * 32 + 5 * 2)
    assert pic.min() >= 0 and pic.max() <= 1
    assert all(torch.equal(before[k], v) for k, v in task.state_dict().items())


def test_config_and_size_errors():
    with pytest.raises(ValueError, match="mask_ratio"):
        SparK.Config(mask_ratio=1.0)
    enc = build_encoder("torchvision:resnet18", small_input=True, input_size=32, in_chans=1)
    with pytest.raises(EncoderError, match="not a multiple"):
        SparK(enc, SparK.Config(decoder_width=64), DataConfig(size=36, channels=1, mean=(0.3,), std=(0.3,)))
    enc = build_encoder("torchvision:resnet18", input_size=64)
    with pytest.raises(EncoderError, match="at least 4 patches"):
        SparK(enc, SparK.Config(decoder_width=64), DataConfig(size=32))
    with pytest.raises(ConfigError, match="in_chans"):
        SparK(build_encoder("torchvision:resnet18", input_size=64), SparK.Config(), FMNIST)


def test_registry_builds_spark_from_a_recipe_section():
    enc = build_encoder("torchvision:resnet18", small_input=True, input_size=32, in_chans=1)
    task = build_task(TaskSpec.from_section({"name": "spark", "mask_ratio": 0.75, "decoder_width": 64}), enc, FMNIST)
    assert isinstance(task, SparK) and task.cfg.mask_ratio == 0.75
    with pytest.raises(ConfigError, match="decoder_widht"):
        build_task(TaskSpec.from_section({"name": "spark", "decoder_widht": 64}), enc, FMNIST)


def test_recipes_load():
    from convssl.recipe import load_recipe

    root = Path(__file__).resolve().parents[1] / "recipes"
    for name in ("spark_resnet50_imagenet.yaml", "spark_resnet18_small.yaml"):
        recipe = load_recipe(root / name)
        assert recipe.task.name == "spark"
