"""BYOL, Barlow Twins, VICReg and DINO: losses against lightly's implementations, schedules
against their formulas, multi-crop views, 2 gloo ranks == one process, exact resume."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from convssl.data.config import DataConfig
from convssl.losses.barlow_twins import barlow_twins_loss
from convssl.losses.byol import byol_loss
from convssl.losses.dino import dino_loss, teacher_probabilities, teacher_temperature_at, updated_center
from convssl.losses.vicreg import vicreg_loss
from convssl.momentum import momentum_at
from convssl.views.crop_views import crop_views
from convssl.views.multicrop import MultiCropConfig, encode_by_resolution, multi_crop, view_pairs

from two_view_ranks import load_script, one_process, two_ranks

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("byol", "barlow_twins", "vicreg", "dino")


# ---- losses against lightly (an independent implementation), fp32, 1e-6 ----------------

def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-6, atol=1e-6)


def test_byol_loss_equals_lightly_negative_cosine_similarity():
    loss_mod = pytest.importorskip("lightly.loss")
    torch.manual_seed(0)
    p0, p1, z0, z1 = (torch.randn(16, 32) for _ in range(4))
    criterion = loss_mod.NegativeCosineSimilarity()
    # L + L~ of BYOL eq. (3), each 2 - 2 cos = 2 + 2 x lightly's negative cosine similarity
    expected = (2 + 2 * criterion(p1, z0)) + (2 + 2 * criterion(p0, z1))
    _close(byol_loss([p0, p1], [z0, z1]), expected)


def test_byol_multi_crop_predicts_every_other_global_target():
    loss_mod = pytest.importorskip("lightly.loss")
    torch.manual_seed(1)
    p = [torch.randn(8, 16) for _ in range(4)]  # 2 global + 2 local predictions
    z = [torch.randn(8, 16) for _ in range(2)]  # targets of the 2 global views
    criterion = loss_mod.NegativeCosineSimilarity()
    pairs = [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    expected = 2 * sum(2 + 2 * criterion(p[j], z[i]) for i, j in pairs) / len(pairs)
    _close(byol_loss(p, z), expected)


def test_byol_target_gets_no_gradient():
    p, z = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    byol_loss([p, p], [z, z]).backward()
    assert z.grad is None and p.grad is not None


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_twins_loss_equals_lightly(lambd):
    loss_mod = pytest.importorskip("lightly.loss")
    torch.manual_seed(2)
    z1, z2 = torch.randn(32, 24), torch.randn(32, 24) * 3 + 1
    _close(barlow_twins_loss(z1, z2, lambd), loss_mod.BarlowTwinsLoss(lambda_param=lambd)(z1, z2))


def test_vicreg_loss_equals_lightly():
    loss_mod = pytest.importorskip("lightly.loss")
    torch.manual_seed(3)
    z1, z2 = torch.randn(32, 24) * 0.5, torch.randn(32, 24) * 2 + 0.3
    _close(vicreg_loss(z1, z2), loss_mod.VICRegLoss()(z1, z2))
    weights = dict(invariance=5.0, variance=10.0, covariance=2.0)
    theirs = loss_mod.VICRegLoss(lambda_param=5.0, mu_param=10.0, nu_param=2.0)(z1, z2)
    _close(vicreg_loss(z1, z2, **weights), theirs)


@pytest.mark.parametrize("local_views", [0, 4])
def test_dino_loss_and_center_equal_lightly(local_views):
    loss_mod = pytest.importorskip("lightly.loss")
    torch.manual_seed(4)
    K, B, T = 64, 8, 0.05
    teacher = [torch.randn(B, K) for _ in range(2)]
    student = [torch.randn(B, K) for _ in range(2 + local_views)]
    center = torch.randn(1, K) * 0.1
    theirs_fn = loss_mod.DINOLoss(output_dim=K, teacher_temp=T, student_temp=0.1, center_momentum=0.9)
    theirs_fn.center.copy_(center.view(1, 1, K))
    theirs = theirs_fn(teacher, student, teacher_temp=T)  # also moves lightly's centre
    ours = dino_loss(teacher_probabilities(teacher, center, T), student, 0.1)
    _close(ours, theirs)
    _close(updated_center(center, teacher, 0.9), theirs_fn.center.view(1, K))


# ---- schedules against their formulas ----------------------------------------------------

def test_teacher_temperature_is_dino_linspace_then_constant():
    total, start, end = 100, 0.04, 0.07
    warmup = np.linspace(start, end, 30)  # DINO: np.linspace(warmup_teacher_temp, teacher_temp, W)
    for step in range(total):
        expected = warmup[step] if step < 30 else end
        assert teacher_temperature_at(step, total, start, end, 0.3) == pytest.approx(expected, rel=1e-12)
    assert teacher_temperature_at(0, 100, start, end, 0.0) == end  # no warm-up
    assert teacher_temperature_at(0, 2, start, end, 0.1) == start  # a fraction > 0 warms at least the first step


def _tiny_task(name: str, **section):
    script = load_script()
    task = script.make_task(name)
    if section:
        from convssl.encoders import Encoder
        from convssl.tasks.registry import TaskSpec, build_task

        torch.manual_seed(0)
        encoder = Encoder(script.tiny_convnet(), input_size=script.SIZE, in_chans=1)
        data = DataConfig(size=script.SIZE, channels=1, mean=(0.5,), std=(0.25,))
        spec = TaskSpec.from_section({"name": name, "augment_on": "worker", **script.SECTIONS[name], **section})
        task = build_task(spec, encoder, data)
    return script, task


@pytest.mark.parametrize("name", ["byol", "dino"])
def test_teacher_is_the_ema_with_the_cosine_momentum_of_the_run(name):
    """After step k of K the teacher is m_k t + (1 - m_k) s with BYOL's m_k = 1 - (1 - m0)(cos(pi k / K) + 1) / 2."""
    script, task = _tiny_task(name, momentum=0.8)
    online = {"byol": ("encoder", "projector"), "dino": ("encoder", "head")}[name]
    targets = {"byol": ("encoder_momentum", "projector_momentum"), "dino": ("encoder_momentum", "head_momentum")}[name]
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.5)
    total = 5
    for step, views in enumerate(script.global_batches(task, steps=3)):
        before = {t: copy.deepcopy(getattr(task, t).state_dict()) for t in targets}
        opt.zero_grad()
        task({"img": views})["loss"].backward()
        opt.step()
        task.after_step(step, total)
        m = 1 - (1 - 0.8) * (math.cos(math.pi * step / total) + 1) / 2
        assert m == pytest.approx(momentum_at(step, total, 0.8, "cosine"))
        for o, t in zip(online, targets):
            for key, p in getattr(task, t).named_parameters():
                expected = m * before[t][key] + (1 - m) * getattr(task, o).get_parameter(key)
                torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)
                assert not p.requires_grad
        assert float(task.momentum_now) == pytest.approx(m, rel=1e-6)


def test_dino_teacher_temperature_follows_its_schedule_through_after_step():
    script, task = _tiny_task("dino", teacher_temp_warmup=0.5)
    total, seen = 8, []
    for step in range(total):
        seen.append(task._teacher_temp)
        assert float(task.teacher_temp_now) == pytest.approx(seen[-1])
        task.after_step(step, total)
    assert seen == pytest.approx(list(np.linspace(0.04, 0.07, 4)) + [0.07] * 4)


def test_dino_uses_the_centre_and_temperature_it_reports():
    """forward's loss is the formula on the teacher's and student's outputs with the
    current centre and temperature; the centre then moves by eq. (4)."""
    script, task = _tiny_task("dino")
    views = script.global_batches(task, steps=1)[0]
    task.center.normal_()
    center = task.center.clone()
    xs = [task.views.prepare(v) for v in views]
    with torch.no_grad():
        teacher = [task._teacher(x) for x in xs[:2]]
        student = [task._student(x) for x in xs]
        expected = dino_loss(teacher_probabilities(teacher, center, 0.04), student, 0.1)
    out = task({"img": views})
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(task.center, updated_center(center, teacher, task.cfg.center_momentum))


# ---- multi-crop views ------------------------------------------------------------------

DATA = DataConfig(size=16, channels=1, mean=(0.5,), std=(0.25,), scale=(0.3, 1.0))


def test_multi_crop_global_then_local_sizes_and_reproducible():
    crops = MultiCropConfig(global_crops=2, local_crops=3, local_size=8, local_scale=(0.05, 0.3))
    transform = multi_crop(DATA, crops)
    img = torch.randint(0, 256, (1, 40, 30), dtype=torch.uint8)
    views = transform(img, torch.Generator().manual_seed(0))["img"]
    assert [tuple(v.shape) for v in views] == [(1, 16, 16)] * 2 + [(1, 8, 8)] * 3
    assert all(v.dtype == torch.uint8 for v in views)
    again = transform(img, torch.Generator().manual_seed(0))["img"]
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    assert view_pairs(crops) == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4)]


def test_multi_crop_without_local_crops_is_the_two_view_transform():
    img = torch.randint(0, 256, (1, 40, 30), dtype=torch.uint8)
    ours = multi_crop(DATA, MultiCropConfig())(img, torch.Generator().manual_seed(7))["img"]
    two = crop_views(DATA, 2)(img, torch.Generator().manual_seed(7))["img"]
    assert len(ours) == 2 and all(torch.equal(a, b) for a, b in zip(ours, two))


def test_encode_by_resolution_runs_once_per_size_group():
    calls = []

    def fn(x):
        calls.append(tuple(x.shape))
        return x.flatten(1).sum(1, keepdim=True) * torch.arange(1, 3)

    views = [torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4),
             torch.randn(3, 1, 4, 4)]
    out = encode_by_resolution(fn, views)
    assert calls == [(6, 1, 8, 8), (9, 1, 4, 4)]
    for o, v in zip(out, views):
        assert torch.equal(o, v.flatten(1).sum(1, keepdim=True) * torch.arange(1, 3))


def test_every_new_task_takes_local_crops():
    """Every new task cuts its views through ``crops``: 2 global + 2 local from one image."""
    from convssl.encoders import Encoder
    from convssl.tasks.registry import TaskSpec, build_task

    script = load_script()
    for name in METHODS:
        enc = Encoder(script.tiny_convnet(), input_size=16, in_chans=1)
        section = {"name": name, **script.SECTIONS[name], "crops": {"local_crops": 2, "local_size": 8}}
        task = build_task(TaskSpec.from_section(section), enc, DATA)
        views = task.loader_transform()(torch.randint(0, 256, (1, 20, 20), dtype=torch.uint8),
                                        torch.Generator().manual_seed(0))["img"]
        assert [v.shape[-1] for v in views] == [16, 16, 8, 8], name
        batch = [torch.stack([v] * 4) for v in views]
        assert torch.isfinite(task({"img": batch})["loss"]), name


def test_simclr_takes_local_crops_and_averages_nt_xent_over_the_pairs():
    from convssl.encoders import Encoder
    from convssl.losses.nt_xent import nt_xent
    from convssl.tasks.registry import TaskSpec, build_task

    script = load_script()
    enc = Encoder(script.tiny_convnet(), input_size=16, in_chans=1)
    section = {"name": "simclr", "augment_on": "worker", "proj_hidden_dim": 32, "proj_out_dim": 8,
               "proj_batch_norm": False, "temperature": 0.5, "crops": {"local_crops": 2, "local_size": 8}}
    task = build_task(TaskSpec.from_section(section), enc, DATA)
    assert task.loader_transform().augment is not None  # the workers' photometric view, after every crop
    samples = [task.loader_transform()(torch.randint(0, 256, (1, 20, 20), dtype=torch.uint8),
                                       torch.Generator().manual_seed(i))["img"] for i in range(6)]
    views = [torch.stack(v) for v in zip(*samples)]
    assert [v.shape[-1] for v in views] == [16, 16, 8, 8]
    with torch.no_grad():
        z = [task.head(task.encoder.pool(task.prepare(v))) for v in views]
        expected = sum(nt_xent(z[i], z[j], 0.5) for i, j in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3)]) / 5
    torch.testing.assert_close(task({"img": views})["loss"], expected, rtol=1e-5, atol=1e-6)


# ---- 2 gloo ranks at batch B/2 == one process at batch B --------------------------------

@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    return two_ranks(tmp_path_factory.mktemp("ddp") / "ddp.pt", METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_two_ranks_equal_one_process(ddp_results, name):
    ref, ddp = one_process(name), ddp_results[name]
    assert ddp["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert ddp["grads"].keys() == ref["grads"].keys() and ref["grads"]
    for key, g in ref["grads"].items():  # atol: Barlow Twins' last bias has an analytic gradient of 0
        torch.testing.assert_close(ddp["grads"][key], g, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} {key}: {m}")
    # teachers after two EMA steps, DINO's all-reduced centre and its temperature (the
    # second step's loss above already compares the online weights after step 1)
    assert ddp["state"].keys() == ref["state"].keys()
    kept = [k for k in ref["state"] if k.startswith(("encoder_momentum.", "projector_momentum.", "head_momentum.",
                                                     "center", "teacher_temp_now"))]
    assert bool(kept) == (name in ("byol", "dino"))
    for key in kept:
        v = ref["state"][key]
        torch.testing.assert_close(ddp["state"][key], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} {key}: {m}")


def test_the_cross_rank_terms_matter():
    """Per-rank statistics would give another loss: the 2-rank test above can fail."""
    torch.manual_seed(5)
    z1, z2 = torch.randn(8, 6), torch.randn(8, 6)
    halves = (barlow_twins_loss(z1[:4], z2[:4]) + barlow_twins_loss(z1[4:], z2[4:])) / 2
    assert float(halves) != pytest.approx(float(barlow_twins_loss(z1, z2)), rel=1e-3)
    halves = (vicreg_loss(z1[:4], z2[:4]) + vicreg_loss(z1[4:], z2[4:])) / 2
    assert float(halves) != pytest.approx(float(vicreg_loss(z1, z2)), rel=1e-3)


# ---- recipes and exact resume through the trainer --------------------------------------

SMALL_HEADS = {
    "byol": ["task.proj_hidden_dim=64", "task.proj_out_dim=32", "task.pred_hidden_dim=64"],
    "barlow_twins": ["task.proj_hidden_dim=64", "task.proj_out_dim=32"],
    "vicreg": ["task.proj_hidden_dim=64", "task.proj_out_dim=32"],
    "dino": ["task.out_dim=64", "task.hidden_dim=64", "task.bottleneck_dim=16"],
}


def test_recipes_load_and_small_ones_run():
    from convssl.encoders import build_encoder
    from convssl.recipe import load_recipe
    from convssl.tasks.registry import build_task

    for name in METHODS:
        for kind in ("resnet18_small", "resnet50_imagenet"):
            recipe = load_recipe(ROOT / f"recipes/{name}_{kind}.yaml")
            assert recipe.task.name == name
        recipe = load_recipe(ROOT / f"recipes/{name}_resnet18_small.yaml", SMALL_HEADS[name])
        task = build_task(recipe.task, build_encoder(recipe.encoder), recipe.data)
        transform = task.loader_transform()
        samples = [transform(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8), torch.Generator().manual_seed(i))
                   for i in range(4)]
        views = [torch.stack(v) for v in zip(*(s["img"] for s in samples))]
        assert torch.isfinite(task({"img": views})["loss"]), name
    dino = load_recipe(ROOT / "recipes/dino_resnet50_imagenet.yaml")
    crops = dino.task.config.crops
    assert (crops.global_crops, crops.local_crops, crops.local_size, dino.task.config.out_dim) == (2, 6, 96, 65536)


@pytest.mark.parametrize("name", METHODS)
def test_resume_through_trainer_is_exact(name, tmp_path):
    """6 steps in one go == 3 steps, stop, resume, 3 more: teacher, centre and temperature included."""
    from convssl import checkpoint as ckpt_io
    from convssl.recipe import load_recipe
    from convssl.train.trainer import pretrain

    recipe = load_recipe(ROOT / f"recipes/{name}_resnet18_small.yaml", [
        "encoder.spec=custom_nets:small_convnet", "encoder.small_input=false", "data.batch_size=8",
        "data.workers=0", "train.channels_last=false", "train.max_steps=6", "optim.warmup_epochs=0",
        *SMALL_HEADS[name]])
    data = str(ROOT / "data/fmnist/unlabeled")
    pretrain(recipe, data, tmp_path / "a", device="cpu", progress=False)
    pretrain(recipe, data, tmp_path / "b", device="cpu", progress=False, stop_after=3)
    assert ckpt_io.load(tmp_path / "b")["step"] == 3
    pretrain(recipe, data, tmp_path / "b", device="cpu", progress=False, resume=True)
    a, b = (ckpt_io.load(tmp_path / r)["task"] for r in ("a", "b"))
    if name in ("byol", "dino"):
        assert any(k.startswith("encoder_momentum.") for k in a)
    if name == "dino":
        assert {"center", "teacher_temp_now"} <= set(a) and float(a["center"].abs().sum()) > 0
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def test_local_crops_smaller_than_the_encoder_takes_fail_when_built():
    from convssl.encoders import Encoder
    from convssl.errors import ConfigError
    from convssl.tasks.registry import TaskSpec, build_task

    enc = Encoder(load_script().tiny_convnet(), input_size=16, in_chans=1)  # total reduction 2
    spec = TaskSpec.from_section({"name": "dino", "crops": {"local_crops": 2, "local_size": 1}})
    with pytest.raises(ConfigError, match="dino: task.crops.local_size 1 is smaller than the encoder's total "
                                          "reduction 2"):
        build_task(spec, enc, DATA)


def test_multi_task_runs_dino_multi_crop_beside_rotation():
    """The multi task needs nothing special: DINO's multi-crop views and rotation's views are
    cut from the same image, filed under each task's name, and both losses train one encoder."""
    from convssl.encoders import Encoder
    from convssl.tasks.registry import TaskSpec, build_task

    script = load_script()
    enc = Encoder(script.tiny_convnet(), input_size=16, in_chans=1)
    section = {"name": "multi", "tasks": [{"name": "dino", **script.SECTIONS["dino"]},
                                          {"name": "rotation", "hidden": 8, "weight": 0.5}]}
    task = build_task(TaskSpec.from_section(section), enc, DATA)
    transform = task.loader_transform()
    samples = [transform(torch.randint(0, 256, (1, 20, 20), dtype=torch.uint8), torch.Generator().manual_seed(i))
               for i in range(4)]
    assert [v.shape[-1] for v in samples[0]["dino/img"]] == [16, 16, 8, 8]
    batch = {key: [torch.stack(v) for v in zip(*(s[key] for s in samples))] for key in samples[0]}
    out = task(batch)
    assert {"dino/loss", "dino/teacher_temp", "rotation/loss"} <= set(out) and torch.isfinite(out["loss"])
    out["loss"].backward()
    task.after_step(0, 10)
    assert all(p.grad is not None for p in enc.parameters())
