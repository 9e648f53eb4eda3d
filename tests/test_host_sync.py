"""One read from the device in a training step that does not log: the step's agreement.

``.item()``, ``int()``, ``float()`` and ``bool()`` on a tensor, and data-dependent shapes
(``nonzero``), all dispatch to ``aten::_local_scalar_dense``, which on a GPU waits for the
device to finish; ``.tolist()`` and ``.numpy()`` read the values on the host without
dispatching anything on CPU, so a ``TorchFunctionMode`` counts those calls. Both count over
whole ``pretrain`` calls of 3 and of 6 steps that log and checkpoint only at their end: the
difference is what 3 non-logging steps cost, for every registered task. Each step reads
one thing from the device: the training step's ``agree`` flags (apply or skip a non-finite step,
stop or go on, the same on every rank), a ``.tolist()`` the dispatch count alone never saw.
The count also sees reads of CPU tensors, which wait for nothing: a view colour-jittered on
the device draws its order of operations on the CPU (``views.photometric``), one per view.
Steps that log read more: the count sees the reads it is looking for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from convssl.data.collate import collate_samples
from convssl.data.shard_dataset import ShardDataset
from convssl.recipe import recipe_from_dict
from convssl.tasks.registry import TASKS, build_task
from convssl.encoders import build_encoder
from convssl.train.trainer import pretrain

REPO = Path(__file__).resolve().parents[1]
UNLABELED = str(REPO / "data" / "fmnist" / "unlabeled")
SMALL = {"spark": {"decoder_width": 32}, "simclr": {"proj_hidden_dim": 64, "proj_out_dim": 32},
         "moco": {"proj_hidden_dim": 64, "proj_out_dim": 32, "queue_size": 64, "bn_groups": 2},
         "rotation": {"hidden": 64},
         "byol": {"proj_hidden_dim": 64, "proj_out_dim": 32, "pred_hidden_dim": 64},
         "barlow_twins": {"proj_hidden_dim": 64, "proj_out_dim": 32},
         "vicreg": {"proj_hidden_dim": 64, "proj_out_dim": 32},
         "dino": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16, "crops": {"local_crops": 2, "local_size": 16}}}


class ScalarReads(TorchDispatchMode):
    """Counts ``aten::_local_scalar_dense`` calls (each one a host-device sync on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


class HostReads(TorchFunctionMode):
    """Counts the Tensor methods that hand values to Python (on a GPU each waits for it)."""

    READS = frozenset({"tolist", "numpy", "item", "__float__", "__int__", "__bool__", "__index__"})

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


# the training step's agree: whether to apply the step and whether to stop, read once per step
STEP_AGREEMENT_READS = 1


def recipe(task: str, steps: int, log_every: int = 1000):
    return recipe_from_dict({
        "encoder": {"spec": "custom_nets:small_convnet", "in_chans": 1},
        "data": {"size": 32, "channels": 1, "mean": [0.29], "std": [0.35], "batch_size": 8, "workers": 0},
        "task": {"name": task, **SMALL.get(task, {})},
        "optim": {"name": "sgd", "lr_per_256": 0.1, "weight_decay": 1e-4, "clip_grad": 3.0},
        "train": {"max_steps": steps, "log_every": log_every, "ckpt_every": 0, "image_every": 0, "seed": 0},
    })


def batches_for(task_name: str, n: int) -> list[dict]:
    r = recipe(task_name, 1)
    task = build_task(r.task, build_encoder(r.encoder), r.data)
    data = ShardDataset(UNLABELED, transform=task.loader_transform(), channels=1, shuffle_buffer=0)
    samples, out = [], []
    for sample in data:
        samples.append(sample)
        if len(samples) == r.data.batch_size:
            out.append(collate_samples(samples))
            samples = []
            if len(out) == n:
                return out
    raise AssertionError("not enough samples")


def syncs_per_step(task_name: str, run_dir: Path, log_every: int = 1000) -> float:
    """Scalar reads per step: (run of 6 steps - run of 3 steps) / 3; with the default
    ``log_every`` both runs log only at their end, so these are non-logging steps."""
    batches = batches_for(task_name, 6)
    counts = []
    for steps in (3, 6):
        torch.manual_seed(0)
        with ScalarReads() as reads, HostReads() as host:
            pretrain(recipe(task_name, steps, log_every), UNLABELED, run_dir / f"s{steps}", batches=iter(batches),
                     progress=False, device="cpu")
        counts.append(reads.count + host.count)
    return (counts[1] - counts[0]) / 3


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_step_that_does_not_log_reads_only_its_agreement_on_the_host(name, tmp_path):
    assert syncs_per_step(name, tmp_path) == STEP_AGREEMENT_READS + jitter_order_draws(name)


def jitter_order_draws(task_name: str) -> int:
    """One CPU draw (no device wait) per view the task colour-jitters on the device."""
    cfg = recipe(task_name, 1).task.config
    augment = getattr(cfg, "augment", None)
    if getattr(cfg, "augment_on", None) != "device" or augment is None or augment.jitter_p == 0:
        return 0
    return len(batches_for(task_name, 1)[0]["img"])


def test_the_count_sees_the_syncs_of_steps_that_log(tmp_path):
    """Logging every step also reads the step's scalars on the host: the same count is then
    higher, so the figure above is measured, not a counter that misses reads."""
    assert syncs_per_step("rotation", tmp_path, log_every=1) > STEP_AGREEMENT_READS


if __name__ == "__main__":  # print the counts: python tests/test_host_sync.py OUT_DIR
    import tempfile

    for name in sorted(TASKS):
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{name}: {syncs_per_step(name, Path(tmp)):g} syncs per non-logging step", flush=True)
