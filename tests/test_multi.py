"""The multi task: a weighted sum of its tasks run alone, nested sections validated,
2 DDP ranks equal one process, resume exact with MoCo's queue."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convssl.encoders import build_encoder
from convssl.errors import ConfigError
from convssl.recipe import load_recipe, recipe_from_dict
from convssl.tasks.registry import TaskSpec, build_task
from convssl import checkpoint as ckpt_io
from convssl.train.trainer import pretrain

ROOT = Path(__file__).resolve().parents[1]
UNLABELED = str(ROOT / "data" / "fmnist" / "unlabeled")
SCRIPT = ROOT / "tests" / "dist_scripts" / "train_multi_fixed_batches.py"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "ssl"), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}

SPARK = {"name": "spark", "decoder_width": 16}
ROTATION = {"name": "rotation", "hidden": 16}


def tiny(task: dict, **train):
    return recipe_from_dict({
        "encoder": {"spec": "custom_nets:small_convnet", "in_chans": 1},
        "data": {"size": 16, "channels": 1, "mean": [0.286], "std": [0.353], "batch_size": 8, "workers": 0,
                 "shuffle_buffer": 16},
        "task": task,
        "optim": {"name": "sgd", "lr_per_256": 0.5, "weight_decay": 0.0},
        "train": {"seed": 0, "log_every": 1, "ckpt_every": 0, "channels_last": False, **train},
    })


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_loss_and_gradients_are_the_weighted_sum_of_each_task_alone(weighting):
    w = {"spark": 0.7, "rotation": 0.3}
    r = tiny({"name": "multi", "weighting": weighting,
              "tasks": [{**SPARK, "weight": w["spark"]}, {**ROTATION, "weight": w["rotation"]}]})
    torch.manual_seed(0)
    multi = build_task(r.task, build_encoder(r.encoder), r.data).train()
    assert multi.tasks["spark"].encoder is multi.tasks["rotation"].encoder is multi.encoder
    assert multi.manages_batchnorm_sync  # SparK's sparse BN
    gen = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=gen)
    mask = multi.tasks["spark"].make_mask(4, generator=gen)
    batch = {"spark/img": [img], "spark/mask": mask, "rotation/img": [img.flip(-1)], "key": ["a"] * 4}
    out = multi(batch)
    out["loss"].backward()
    got = {n: p.grad.clone() for n, p in multi.encoder.named_parameters()}

    # each task alone: a fresh task of its own (own encoder) holding the same parameters
    losses, grads = {}, {}
    for section, sub in ((SPARK, {"img": [img], "mask": mask}), (ROTATION, {"img": [img.flip(-1)]})):
        name = section["name"]
        alone = build_task(TaskSpec.from_section(section), build_encoder(r.encoder), r.data).train()
        alone.load_state_dict(multi.tasks[name].state_dict())
        loss = alone(sub)["loss"]
        loss.backward()
        losses[name] = loss.detach()
        grads[name] = dict(alone.encoder.named_parameters())
    if weighting == "fixed":
        want = sum(w[n] * losses[n] for n in w)
        coef = w
    else:  # Kendall et al. 2018: exp(-s) L + s with s = -log w at the start
        want = sum(w[n] * losses[n] - math.log(w[n]) for n in w)
        coef = w
        multi.log_vars.grad  # d/ds_i = -exp(-s_i) L_i + 1
        torch.testing.assert_close(multi.log_vars.grad, torch.stack([1 - w[n] * losses[n] for n in w]))
    torch.testing.assert_close(out["loss"], want, rtol=1e-5, atol=1e-6)
    for n in w:
        torch.testing.assert_close(out[f"{n}/loss"], losses[n])
    for pname, g in got.items():
        torch.testing.assert_close(g, sum(coef[n] * grads[n][pname].grad for n in w), rtol=1e-4, atol=1e-6,
                                   msg=pname)


def test_loader_transform_namespaces_each_tasks_views():
    r = tiny({"name": "multi", "tasks": [{"name": "simclr", "proj_hidden_dim": 16, "proj_out_dim": 8}, ROTATION]})
    multi = build_task(r.task, build_encoder(r.encoder), r.data)
    sample = multi.loader_transform()(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8),
                                      torch.Generator().manual_seed(0))
    assert sorted(sample) == ["rotation/img", "simclr/img"]
    assert len(sample["simclr/img"]) == 2 and len(sample["rotation/img"]) == 1
    assert all(v.shape == (1, 16, 16) and v.dtype == torch.uint8 for vs in sample.values() for v in vs)


@pytest.mark.parametrize("override, message", [
    ("task.tasks=[{name: rotation, hiden: 8}]", r"task.tasks\[0\].hiden"),
    ("task.tasks=[{name: spark}, {name: rotation, hidden: wide}]", r"task.tasks\[1\].hidden: expected an integer"),
    ("task.tasks=[{name: rotation, weight: -1}]", r"task.tasks\[0\].weight must be"),
    ("task.tasks=[{name: jigsaw9}]", "unknown task 'jigsaw9'"),
    ("task.tasks=[{name: multi}]", "cannot nest"),
    ("task.tasks=[{name: rotation}, {name: rotation}]", "more than once"),
    ("task.tasks=[{weight: 1.0}]", r"task.tasks\[0\].name is missing"),
    ("task.weighting=learned", "task.weighting"),
])
def test_nested_sections_are_validated_before_anything_runs(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(ROOT / "recipes" / "multi_spark_rotation_small.yaml", [override])


def test_bundled_multi_recipes_load():
    for name in ("multi_spark_rotation_small.yaml", "multi_simclr_rotation_small.yaml"):
        assert load_recipe(ROOT / "recipes" / name).task.name == "multi"


def final_task_weights(run: Path) -> dict:
    return ckpt_io.load(ckpt_io.latest(run / "checkpoints"))["task"]


def test_resume_of_a_multi_task_run_is_exact_moco_queue_included(tmp_path):
    task = {"name": "multi", "weighting": "uncertainty", "tasks": [
        {"name": "moco", "weight": 1.0, "proj_hidden_dim": 16, "proj_out_dim": 8, "queue_size": 12,
         "momentum": 0.9, "bn_groups": 2},
        {**ROTATION, "weight": 0.5}]}
    pretrain(tiny(task, max_steps=4), UNLABELED, tmp_path / "straight", progress=False)
    pretrain(tiny(task, max_steps=4), UNLABELED, tmp_path / "split", progress=False, stop_after=2)
    pretrain(tiny(task, max_steps=4), UNLABELED, tmp_path / "split", resume=True, progress=False)
    a, b = final_task_weights(tmp_path / "straight"), final_task_weights(tmp_path / "split")
    assert {"tasks.moco.queue", "tasks.moco.queue_ptr", "tasks.moco.encoder_momentum.model.0.weight",
            "log_vars"} <= set(a)
    assert int(a["tasks.moco.queue_ptr"]) == (4 * 8) % 12
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.slow
def test_two_torchrun_ranks_give_the_same_multi_task_weights_as_one_process(tmp_path):
    steps, batch = 2, 8
    one = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "one"), str(steps), str(batch)],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29547", str(SCRIPT), str(tmp_path / "two"), str(steps), str(batch)],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = final_task_weights(tmp_path / "one"), final_task_weights(tmp_path / "two")
    assert set(a) == set(b) and "log_vars" in a
    assert (a["log_vars"] - torch.tensor([-math.log(0.4), 0.0])).abs().max() > 1e-4  # the weights learned
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
