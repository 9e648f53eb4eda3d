"""Contrastive pretraining: losses against explicit loops, DDP == one process, MoCo's
momentum encoder and queue by hand, state round-trips, view augmentations, a peer library."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from convssl.data.config import DataConfig
from convssl.encoders import Encoder, build_encoder
from convssl.losses.info_nce import info_nce, info_nce_logits
from convssl.losses.nt_xent import nt_xent
from convssl.momentum import ema_update, momentum_at
from convssl.views import photometric as P
from convssl.views.photometric import PhotometricView
from convssl.views.photometric_config import ColorAugConfig
from convssl.tasks.registry import TaskSpec, build_task

from two_view_ranks import load_script, one_process, two_ranks

ROOT = Path(__file__).resolve().parents[1]


# ---- losses against the papers' formulas, written as loops -----------------------------

def test_nt_xent_equals_explicit_loop_over_pairs():
    torch.manual_seed(0)
    z1, z2, tau = torch.randn(5, 7), torch.randn(5, 7), 0.3
    # SimCLR eq. (1): views interleaved as 2k, 2k+1; L = 1/(2N) sum_k l(2k,2k+1) + l(2k+1,2k)
    z = [v for pair in zip(z1, z2) for v in pair]
    sim = [[float(F.cosine_similarity(a, b, dim=0)) for b in z] for a in z]

    def l(i, j):
        denom = sum(math.exp(sim[i][k] / tau) for k in range(len(z)) if k != i)
        return -math.log(math.exp(sim[i][j] / tau) / denom)

    n = len(z1)
    expected = sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(expected, rel=1e-5)


def test_info_nce_equals_explicit_loop():
    torch.manual_seed(0)
    q, k, tau = torch.randn(4, 6), torch.randn(4, 6), 0.2
    queue = F.normalize(torch.randn(9, 6), dim=1)
    total = 0.0
    for i in range(4):
        qi, ki = F.normalize(q[i], dim=0), F.normalize(k[i], dim=0)
        pos = math.exp(float(qi @ ki) / tau)
        neg = sum(math.exp(float(qi @ queue[j]) / tau) for j in range(9))
        total += -math.log(pos / (pos + neg))
    assert float(info_nce(q, k, queue, tau)) == pytest.approx(total / 4, rel=1e-5)
    logits = info_nce_logits(q, k, queue, tau)
    assert logits.shape == (4, 10)
    assert torch.allclose(logits[:, 0], (F.normalize(q, dim=1) * F.normalize(k, dim=1)).sum(1) / tau)


def test_nt_xent_agrees_with_lightly():
    loss_mod = pytest.importorskip("lightly.loss")
    torch.manual_seed(1)
    z1, z2 = torch.randn(16, 32), torch.randn(16, 32)
    ours = nt_xent(z1, z2, 0.5)
    theirs = loss_mod.NTXentLoss(temperature=0.5)(z1, z2)
    assert torch.allclose(ours, theirs, atol=1e-6)


# ---- DDP with 2 gloo ranks == one process with the whole batch --------------------------

@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    return two_ranks(tmp_path_factory.mktemp("ddp") / "ddp.pt", ("simclr", "moco"))


def test_simclr_two_ranks_equal_one_process(ddp_results):
    ddp, ref = ddp_results["simclr"], one_process("simclr")
    assert ddp["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert ddp["grads"].keys() == ref["grads"].keys()
    for name, g in ref["grads"].items():
        assert name.startswith(("encoder.", "head."))
        assert torch.allclose(ddp["grads"][name], g, rtol=1e-4, atol=1e-6), name


def test_moco_two_ranks_equal_one_process_with_bn_groups(ddp_results):
    """Shuffle-BN over 2 ranks == its one-process emulation with 2 BN groups, exactly."""
    ddp, ref = ddp_results["moco"], one_process("moco", bn_groups=2)
    assert ddp["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    for name, g in ref["grads"].items():
        assert torch.allclose(ddp["grads"][name], g, rtol=1e-4, atol=1e-6), name
    for key in ("queue", "queue_ptr", "steps", "encoder_momentum.model.0.weight",
                "head_momentum.0.weight"):
        assert torch.allclose(ddp["state"][key].float(), ref["state"][key].float(), atol=1e-6), key
    # BN running statistics are the one difference: G groups update them G times per step
    # in one process, once per rank in DDP (and they are only used in eval mode)


def test_moco_bn_groups_change_the_keys():
    """Without groups one process normalizes over the whole batch: a different computation."""
    assert one_process("moco", bn_groups=1)["loss"] != pytest.approx(
        one_process("moco", bn_groups=2)["loss"], rel=1e-6)


# ---- MoCo: momentum update, queue, state ------------------------------------------------

def test_ema_update_hand_computed():
    online, target = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0]])); online.bias.fill_(3.0)
        target.weight.copy_(torch.tensor([[0.0, 4.0]])); target.bias.fill_(-1.0)
    ema_update(online, target, 0.9)
    assert torch.allclose(target.weight, torch.tensor([[0.1, 3.8]]))  # 0.9*t + 0.1*o
    assert torch.allclose(target.bias, torch.tensor([-0.6]))


def test_momentum_schedules():
    assert momentum_at(5, 10, 0.99, "constant") == 0.99
    assert momentum_at(0, 10, 0.99, "cosine") == pytest.approx(0.99)
    assert momentum_at(5, 10, 0.99, "cosine") == pytest.approx(0.995)
    assert momentum_at(10, 10, 0.99, "cosine") == pytest.approx(1.0)


def _moco(queue_size=5, out_dim=2, **kw):
    torch.manual_seed(0)
    enc = Encoder(load_script().tiny_convnet("bn"), input_size=16, in_chans=1)
    data = DataConfig(size=16, channels=1, mean=(0.5,), std=(0.25,))
    spec = TaskSpec.from_section({"name": "moco", "queue_size": queue_size, "proj_hidden_dim": 16,
                                  "proj_out_dim": out_dim, **kw})
    return build_task(spec, enc, data)


def test_queue_enqueue_overwrites_oldest_and_wraps():
    task = _moco(queue_size=5)
    start = task.queue.clone()
    a, b, c = (torch.full((2, 2), v) for v in (1.0, 2.0, 3.0))
    task.enqueue(a)
    assert int(task.queue_ptr) == 2
    assert torch.equal(task.queue[:2], a) and torch.equal(task.queue[2:], start[2:])
    task.enqueue(b)
    task.enqueue(c)  # slots 4 and 0: the oldest key (from a) goes first
    assert int(task.queue_ptr) == 1
    assert torch.equal(task.queue, torch.tensor([[3.0, 3], [1, 1], [2, 2], [2, 2], [3, 3]]))


def test_moco_forward_enqueues_its_keys_and_after_step_is_the_ema():
    task = _moco(queue_size=16, out_dim=4, momentum=0.75, augment_on="worker")
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=1.0)
    views = [torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8) for _ in range(2)]
    key_before = {n: p.clone() for n, p in task.encoder_momentum.named_parameters()}
    queue_before = task.queue.clone()
    # The keys by hand: the key encoder starts as a copy of the online one; in train mode
    # its BN uses the statistics of the whole key batch (one process, bn_groups 1, so the
    # shuffle only reorders the batch); then L2-normalized (He et al. 2020, Algorithm 1).
    encoder, head = copy.deepcopy(task.encoder).train(), copy.deepcopy(task.head).train()
    x_k = (views[1].float() / 255 - 0.5) / 0.25  # data mean 0.5, std 0.25; no device augmentation
    with torch.no_grad():
        expected_keys = F.normalize(head(encoder.pool(x_k)), dim=1)
    out = task({"img": views})
    assert int(task.queue_ptr) == 6 and int(task.steps) == 1
    torch.testing.assert_close(task.queue[:6], expected_keys, rtol=1e-4, atol=1e-5)
    assert torch.equal(task.queue[6:], queue_before[6:])  # the rest of the queue untouched
    opt.zero_grad(); out["loss"].backward(); opt.step()
    assert all(p.grad is None for p in task.encoder_momentum.parameters())
    task.after_step(1, 10)
    for n, p in task.encoder_momentum.named_parameters():
        online = task.encoder.get_parameter(n)
        assert torch.allclose(p, 0.75 * key_before[n] + 0.25 * online, atol=1e-6), n


def test_moco_state_dict_round_trip_resumes_exactly():
    task = _moco(queue_size=12, out_dim=4, augment_on="device")
    views = [torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8) for _ in range(2)]
    for step in range(2):
        task({"img": views})["loss"].backward()
        task.after_step(step + 1, 10)
    state = {k: v.clone() for k, v in task.state_dict().items()}
    torch.manual_seed(99)
    other = _moco(queue_size=12, out_dim=4, augment_on="device")
    other.encoder_momentum.model[0].weight.data.add_(1.0)  # make sure loading overwrites
    other.load_state_dict(state)
    for k, v in task.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    assert {"queue", "queue_ptr", "steps"} <= set(state)
    assert any(k.startswith("encoder_momentum.") for k in state)
    assert any(k.startswith("head_momentum.") for k in state)
    torch.manual_seed(5); a = task({"img": views})["loss"]
    torch.manual_seed(5); b = other({"img": views})["loss"]
    assert torch.equal(a, b) and torch.equal(task.queue, other.queue)


# ---- tasks on encoders ------------------------------------------------------------------

FAST_ENCODERS = ["custom"]  # resnet18 runs in test_recipes_build
SLOW_ENCODERS = ["torchvision:resnet18", "torchvision:resnet50", "torchvision:convnext_tiny", "torchvision:mobilenet_v3_large",
                 "torchvision:efficientnet_b0", "torchvision:regnet_y_400mf"]


def _encoder(spec: str, channels: int):
    if spec == "custom":
        return Encoder(load_script().tiny_convnet("bn"), input_size=32, in_chans=1), 32, 1
    small = "resnet" in spec
    size = 32 if small else 64
    return build_encoder(spec, small_input=small, input_size=size, in_chans=channels), size, channels


def _check_task_on(spec: str, name: str):
    enc, size, c = _encoder(spec, channels=3)
    mean, std = (0.5,) * c, (0.25,) * c
    data = DataConfig(size=size, channels=c, mean=mean, std=std)
    extra = {"queue_size": 32, "bn_groups": 2} if name == "moco" else {}
    task = build_task(TaskSpec.from_section({"name": name, "proj_hidden_dim": 64, "proj_out_dim": 16, **extra}), enc, data)
    views = [torch.randint(0, 256, (8, c, size, size), dtype=torch.uint8) for _ in range(2)]
    out = task({"img": views})
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in task.encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:1]) and any(g.abs().sum() > 0 for g in grads if g is not None)
    if hasattr(task, "after_step"):
        task.after_step(1, 10)


@pytest.mark.parametrize("spec", FAST_ENCODERS)
@pytest.mark.parametrize("name", ["simclr", "moco"])
def test_tasks_train_on_encoder(spec, name):
    _check_task_on(spec, name)


@pytest.mark.slow
@pytest.mark.parametrize("spec", SLOW_ENCODERS)
@pytest.mark.parametrize("name", ["simclr", "moco"])
def test_tasks_train_on_every_encoder(spec, name):
    _check_task_on(spec, name)


def test_recipes_build():
    from convssl.recipe import load_recipe

    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    names = {r.name for r in recipes}
    assert {"simclr_resnet18_small.yaml", "moco_resnet18_small.yaml",
            "simclr_resnet50_imagenet.yaml", "mocov2_resnet50_imagenet.yaml"} <= names
    for path in recipes:
        if not path.name.startswith(("simclr", "moco")):
            continue
        recipe = load_recipe(path)  # every section typed and checked, the task's included
        assert recipe.task.name in ("simclr", "moco")
        if "imagenet" in path.name:
            continue  # resnet50 at 224 px: building is slow, the schema check above suffices
        section = recipe.task.to_section() | ({"bn_groups": 2} if "bn_groups" in recipe.task.section else {})  # batch of 4
        task = build_task(TaskSpec.from_section(section), build_encoder(recipe.encoder), recipe.data)
        d = recipe.data
        views = [torch.randint(0, 256, (4, d.channels, d.size, d.size), dtype=torch.uint8) for _ in range(2)]
        assert torch.isfinite(task({"img": views})["loss"])


# ---- view augmentations ----------------------------------------------------------------

STRONG = ColorAugConfig(jitter_p=1.0, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                        grayscale_p=0.2, blur_p=0.5, solarize_p=0.2)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_augment_keeps_shape_dtype_range_and_differs_per_sample(channels):
    torch.manual_seed(0)
    one = torch.rand(1, channels, 32, 32)
    x = one.expand(16, -1, -1, -1).contiguous()  # the same image 16 times
    y = P.color_augment(x, STRONG)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    flat = y.flatten(1)
    assert len({tuple(r.tolist()) for r in flat.round(decimals=5)}) == 16  # all samples differ


def test_color_augment_reproducible_with_generator():
    x = torch.rand(4, 3, 16, 16)
    a = P.color_augment(x, STRONG, torch.Generator().manual_seed(3))
    b = P.color_augment(x, STRONG, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_hue_and_saturation_are_noops_on_one_channel():
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(P.adjust_hue(x, torch.full((3,), 0.3)), x)
    assert torch.equal(P.adjust_saturation(x, torch.full((3,), 0.1)), x)
    y = P.color_augment(x, ColorAugConfig(brightness=0, contrast=0, saturation=1, hue=0.5, jitter_p=1))
    assert torch.equal(y, x)


@pytest.mark.parametrize("channels", [1, 3])
def test_single_ops_match_torchvision(channels):
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(0)
    x = torch.rand(4, channels, 20, 20)
    f = torch.tensor([0.3, 0.9, 1.4, 1.8])
    h = torch.tensor([-0.4, -0.05, 0.1, 0.45])
    sigma = torch.tensor([0.3, 0.8, 1.5, 2.0])
    for i in range(4):
        xi = x[i]
        assert torch.allclose(P.adjust_brightness(x, f)[i], TF.adjust_brightness(xi, float(f[i])), atol=1e-5)
        assert torch.allclose(P.adjust_contrast(x, f)[i], TF.adjust_contrast(xi, float(f[i])), atol=1e-5)
        assert torch.allclose(P.gaussian_blur(x, sigma, 5)[i],
                              TF.gaussian_blur(xi, [5, 5], [float(sigma[i])] * 2), atol=1e-5)
        if channels == 3:
            assert torch.allclose(P.adjust_saturation(x, f)[i], TF.adjust_saturation(xi, float(f[i])), atol=1e-5)
            assert torch.allclose(P.adjust_hue(x, h)[i], TF.adjust_hue(xi, float(h[i])), atol=1e-4)
            assert torch.allclose(P.rgb_to_gray(x)[i], TF.rgb_to_grayscale(xi), atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_worker_transform_keeps_uint8_views(channels):
    t = PhotometricView(STRONG)
    x = torch.randint(0, 256, (channels, 32, 32), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    outs = [t(x, generator) for _ in range(6)]
    assert all(o.shape == x.shape and o.dtype == torch.uint8 for o in outs)
    assert len({o.sum().item() for o in outs}) > 1


def test_worker_path_skips_device_augmentation():
    data = DataConfig(size=16, channels=1, mean=(0.5,), std=(0.25,))
    enc = Encoder(load_script().tiny_convnet("gn"), input_size=16, in_chans=1)
    task = build_task(TaskSpec.from_section({"name": "simclr", "augment_on": "worker"}), enc, data)
    img = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    assert torch.equal(task.prepare(img), (img.float() / 255 - 0.5) / 0.25)
    assert task.loader_transform().augment is not None
    assert build_task(TaskSpec.from_section({"name": "simclr"}), enc, data).loader_transform().augment is None
    # worker path: each of the two views is cropped, then photometrically augmented, as uint8
    views = task.loader_transform()(torch.randint(0, 256, (1, 24, 24), dtype=torch.uint8),
                                    torch.Generator().manual_seed(0))["img"]
    assert len(views) == 2 and all(v.shape == (1, 16, 16) and v.dtype == torch.uint8 for v in views)


# ---- through the trainer ----------------------------------------------------------------

def test_moco_resume_through_trainer_is_exact(tmp_path):
    """4 steps in one go == 2 steps, stop, resume, 2 more: queue and key encoder included."""
    from convssl.recipe import load_recipe
    from convssl import checkpoint as ckpt_io
    from convssl.train.trainer import pretrain

    recipe = load_recipe(ROOT / "recipes/moco_resnet18_small.yaml", [
        "encoder.spec=custom_nets:small_convnet", "encoder.small_input=false", "data.batch_size=32",
        "data.workers=0", "task.queue_size=96", "task.bn_groups=2", "train.channels_last=false",
        "train.max_steps=4"])
    data = str(ROOT / "data/fmnist/unlabeled")
    pretrain(recipe, data, tmp_path / "a", device="cpu", progress=False)
    pretrain(recipe, data, tmp_path / "b", device="cpu", progress=False, stop_after=2)
    assert ckpt_io.load(tmp_path / "b")["step"] == 2
    pretrain(recipe, data, tmp_path / "b", device="cpu", progress=False, resume=True)
    a, b = (ckpt_io.load(tmp_path / r)["task"] for r in ("a", "b"))
    assert int(a["steps"]) == 4 and int(a["queue_ptr"]) == (4 * 32) % 96
    for k, v in a.items():
        assert torch.equal(v, b[k]), k
