"""Contract tests over the whole task registry: they grow by themselves when a task is added.

Every registered task, and a task from outside the package (``task_plugin``: a package of
its own with a ``convssl.tasks`` entry point), on three kinds of encoder (a ResNet, a
MobileNet, a user's Sequential), takes one real trainer step on the embedded shards with
a finite loss, and on a real batch cut by its own ``loader_transform`` its loss sends
gradients into every encoder stage.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from task_plugin import CLASS_PATH, ENTRY_POINT, PACKAGE, write_plugin

from convssl.cli import main
from convssl.data.collate import collate_samples
from convssl.data.shard_dataset import ShardDataset
from convssl.encoders import build_encoder
from convssl.errors import ConfigError
from convssl.recipe import recipe_from_dict
from convssl import checkpoint as ckpt_io
from convssl.tasks.registry import TASKS, TaskSpec, build_task, task_class
from convssl.tasks import PretextTask, check_task
from convssl.train.trainer import pretrain

REPO = Path(__file__).resolve().parents[1]
UNLABELED = str(REPO / "data" / "fmnist" / "unlabeled")
ALL_TASKS = [*sorted(TASKS), ENTRY_POINT]  # the built-ins and the plugin's entry point

# (spec, extra encoder keys, input size): sizes each encoder takes (SparK needs >= 4 patches)
ENCODERS = {
    "resnet18_small": ("torchvision:resnet18", {"small_input": True}, 32),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", {}, 64),
    "custom_sequential": ("custom_nets:small_convnet", {}, 32),
}
# Small heads and queues so that 36 combinations stay fast; every other key is the default.
SMALL = {"spark": {"decoder_width": 32}, "simclr": {"proj_hidden_dim": 64, "proj_out_dim": 32},
         "moco": {"proj_hidden_dim": 64, "proj_out_dim": 32, "queue_size": 64},
         "rotation": {"hidden": 64}, "context": {"hidden": 64, "pairs": 2},
         "jigsaw": {"permutations": 10, "tile_dim": 16, "hidden": 64},
         "multi": {"tasks": [{"name": "rotation", "hidden": 64}]},  # spark + rotation: tests/test_multi.py
         "byol": {"proj_hidden_dim": 64, "proj_out_dim": 32, "pred_hidden_dim": 64},
         "barlow_twins": {"proj_hidden_dim": 64, "proj_out_dim": 32},
         "vicreg": {"proj_hidden_dim": 64, "proj_out_dim": 32},
         "dino": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16,
                  "crops": {"local_crops": 2, "local_size": 32}},  # multi-crop (MobileNet's minimum side)
         ENTRY_POINT: {"hidden": 16}}
# Patch tasks cut each input into a 3x3 grid whose patches must take the encoder's minimum
# input (its total reduction): MobileNet's 32x needs >= 32 px patches, so larger inputs.
PATCH_TASKS, PATCH_TASK_SIZES = {"context", "jigsaw"}, {"mobilenet_v3_small": 160}


def recipe(task: str, encoder: str, **train):
    spec, extra, size = ENCODERS[encoder]
    if task in PATCH_TASKS:
        size = PATCH_TASK_SIZES.get(encoder, size)
    section = {"name": task}
    section.update({k: v for k, v in SMALL.get(task, {}).items() if k in _fields(task)})
    return recipe_from_dict({
        "encoder": {"spec": spec, "in_chans": 1, **extra},
        "data": {"size": size, "channels": 1, "mean": [0.29], "std": [0.35], "batch_size": 8, "workers": 0,
                 "shuffle_buffer": 16, "scale": [0.5, 1.0]},
        "task": section,
        "optim": {"name": "sgd", "lr_per_256": 0.1, "weight_decay": 0.0},
        "train": {"max_steps": 1, "log_every": 1, "ckpt_every": 0, "image_every": 0, "seed": 0, **train},
    })


def _fields(task: str) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(task_class(task).Config)}


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plugin package importable, and its entry point visible to importlib.metadata."""
    write_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def real_batch(task, size: int, n: int = 8) -> dict:
    data = ShardDataset(UNLABELED, transform=task.loader_transform(), channels=1, shuffle_buffer=1)
    samples = []
    for sample in data:
        samples.append(sample)
        if len(samples) == n:
            return collate_samples(samples)
    raise AssertionError("not enough samples")


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("name", ALL_TASKS)
def test_every_task_trains_and_reaches_every_stage(name, encoder, tmp_path, plugin):
    r = recipe(name, encoder)
    summary = pretrain(r, UNLABELED, tmp_path / "run", progress=False)
    assert summary["steps"] == 1 and math.isfinite(summary["metrics"]["loss"])

    torch.manual_seed(0)
    enc = build_encoder(r.encoder)
    task = build_task(r.task, enc, r.data).train()
    assert isinstance(task, PretextTask)
    outputs: dict[str, list[torch.Tensor]] = {s: [] for s in enc.stage_names}

    def keep(stage):
        def hook(_module, _inputs, out):
            if out.requires_grad:  # the online pass (MoCo's key encoder runs without grad)
                out.retain_grad()
                outputs[stage].append(out)
        return hook

    handles = [enc.model.get_submodule(s).register_forward_hook(keep(s)) for s in enc.stage_names]
    try:
        out = task(real_batch(task, r.data.size))
    finally:
        for h in handles:
            h.remove()
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    for stage, maps in outputs.items():
        assert maps, f"{name} on {encoder}: stage {stage} never ran with gradients"
        assert any(m.grad is not None and m.grad.abs().sum() > 0 for m in maps), \
            f"{name} on {encoder}: no gradient reached stage {stage}"
    assert task.export_encoder() is enc


def test_a_task_missing_part_of_the_contract_is_named():
    class Half(nn.Module):
        Config = object
        manages_batchnorm_sync = False

        def forward(self, batch):
            return {}

    with pytest.raises(ConfigError, match="missing loader_transform, after_step, pictures, export_encoder"):
        check_task(Half, "half")


@pytest.mark.parametrize("name", [ENTRY_POINT, CLASS_PATH])
def test_a_task_from_outside_the_package_trains_through_convssl_pretrain(name, tmp_path, plugin):
    """By its entry point and by package.module:Class, from a recipe, through the command line:
    the run's config.yaml records the section as written and reads back as the same recipe."""
    r = recipe(ENTRY_POINT, "resnet18_small")
    raw = {**r.to_dict(), "task": {"name": name, "hidden": 8}}
    raw["train"] |= {"max_steps": 2, "ckpt_every": 2}
    (tmp_path / "plugin.yaml").write_text(yaml.safe_dump(raw))
    assert main(["pretrain", "--recipe", str(tmp_path / "plugin.yaml"), "--data", UNLABELED,
                 "--out", str(tmp_path / "run"), "--quiet"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["task"] == {"name": name, "hidden": 8}
    again = recipe_from_dict({k: v for k, v in saved.items() if k != "run"})
    assert again.task.to_section() == {"name": name, "hidden": 8}
    assert type(again.task.config).__module__ == f"{PACKAGE}.tasks" and again.task.config.hidden == 8
    state = ckpt_io.load(ckpt_io.latest(tmp_path / "run" / "checkpoints"))
    assert state["step"] == 2 and state["task"]["head.0.weight"].shape == (8, 512)


@pytest.mark.parametrize(("name", "message"), [
    ("no_such_pkg.tasks:Task", r"task 'no_such_pkg.tasks:Task': cannot import module 'no_such_pkg.tasks'"),
    (f"{PACKAGE}.tasks:UpsideDwn", r"has no attribute 'UpsideDwn' \(did you mean UpsideDown\?\)"),
    (f"{PACKAGE}.tasks:NotATask", r"does not follow the task contract .*missing Config, manages_batchnorm_sync"),
    (f"{PACKAGE}.tasks:torch", r"is <module 'torch'.*not an nn.Module class"),
    ("upside_dwn", (rf"unknown task 'upside_dwn' \(did you mean {ENTRY_POINT}\?\); available tasks: "
                    rf"\w+, .*rotation, .*{ENTRY_POINT}; or a class of your own as package.module:Class$")),
])
def test_a_task_name_that_resolves_to_no_task_is_one_clear_error(name, message, plugin):
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict({**recipe("rotation", "resnet18_small").to_dict(), "task": {"name": name}})


def test_the_task_section_is_parsed_once_into_its_typed_config(plugin):
    """Recipe.task is the spec: name, class and typed Config; a multi task's entries are
    specs with weights, parsed by the same code (the same errors, at their key path)."""
    r = recipe_from_dict({**recipe("rotation", "resnet18_small").to_dict(),
                          "task": {"name": "multi", "tasks": [{"name": ENTRY_POINT, "weight": "0.5", "hidden": 4},
                                                              {"name": "rotation"}]}})
    first, second = r.task.config.tasks
    assert (first.spec.name, first.weight, first.spec.config.hidden) == (ENTRY_POINT, 0.5, 4)
    assert second.spec.cls is task_class("rotation") and second.weight == 1.0
    assert r.to_dict()["task"] == {"name": "multi", "tasks": [{"name": ENTRY_POINT, "weight": "0.5", "hidden": 4},
                                                              {"name": "rotation"}]}
    with pytest.raises(ConfigError, match=r"unknown key task.tasks\[0\].hiden \(did you mean task.tasks\[0\].hidden\?\)"):
        recipe_from_dict({**r.to_dict(), "task": {"name": "multi", "tasks": [{"name": ENTRY_POINT, "hiden": 4}]}})


def test_rotation_and_spark_share_one_encoder():
    """Two tasks, one of them sparse, on one encoder: the dense one still runs dense, and both
    losses' gradients land in the same parameters."""
    r = recipe("spark", "resnet18_small")
    enc = build_encoder(r.encoder)
    spark = build_task(TaskSpec.from_section({"name": "spark", "decoder_width": 32}), enc, r.data)
    rotation = build_task(TaskSpec.from_section({"name": "rotation", "hidden": 64}), enc, r.data)
    assert spark.encoder is rotation.encoder is enc
    ref = copy.deepcopy(enc)
    img = [torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)]
    spark.train(), rotation.train()
    spark({"img": img})["loss"].backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    assert len(grads) == len(list(enc.parameters())), "the sparse pass missed some encoder parameters"
    rotation({"img": img})["loss"].backward()  # accumulates into the very same tensors
    assert all(not torch.equal(grads[n], p.grad) for n, p in enc.named_parameters())
    # the shared encoder is still the dense model: same classes, and (given the BN statistics
    # both passes updated) the same function as an untouched copy
    assert [type(m) for m in enc.modules()] == [type(m) for m in ref.modules()]
    ref.load_state_dict(enc.state_dict())
    enc.eval(), ref.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc(x)[-1], ref(x)[-1])
