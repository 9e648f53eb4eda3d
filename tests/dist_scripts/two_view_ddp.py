"""Two training steps of the two-view tasks (SimCLR, MoCo v2, BYOL, Barlow Twins, VICReg,
DINO), in one process or under torchrun (gloo, CPU).

Run by tests/test_contrastive.py and tests/test_joint_embedding.py (through
tests/two_view_ranks.py) as
    torchrun --nproc-per-node 2 --standalone tests/dist_scripts/two_view_ddp.py OUT.pt TASK...
Each rank takes its slice of the same global batch (views cut by the task's own loader
transform); rank 0 saves what it saw (losses averaged over ranks, DDP-averaged gradients,
the task's state: MoCo's queue, teachers, DINO's centre) for the test to compare with one
process on the whole batch. The tests import these functions for that single-process
reference, so both sides run the same code.

A GroupNorm convnet and heads without BatchNorm: no per-rank batch statistics anywhere
(nn.SyncBatchNorm is GPU-only), so any difference is the tasks' own cross-rank terms
(SimCLR's gathered negatives, Barlow Twins' cross-correlation, VICReg's variance and
covariance, DINO's centre). MoCo alone has a BatchNorm convnet: its shuffle-BN across ranks
is what it tests, against ``bn_groups = world size`` in one process.
DINO runs with 2 local crops at half the size, so its two resolution groups are covered.
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn

GLOBAL_BATCH = 8
SIZE = 16
HEAD = {"proj_hidden_dim": 32, "proj_out_dim": 8}
SECTIONS = {
    "simclr": {**HEAD, "temperature": 0.5, "proj_batch_norm": False},
    "moco": {**HEAD, "queue_size": 20, "momentum": 0.9, "temperature": 0.2},
    "byol": {**HEAD, "pred_hidden_dim": 32, "proj_batch_norm": False, "momentum": 0.9},
    "barlow_twins": {**HEAD, "proj_batch_norm": False},
    "vicreg": {**HEAD, "proj_batch_norm": False},
    "dino": {"out_dim": 16, "hidden_dim": 32, "bottleneck_dim": 8, "momentum": 0.9, "center_momentum": 0.5,
             "teacher_temp_warmup": 0.5, "crops": {"local_crops": 2, "local_size": SIZE // 2}},
}


def tiny_convnet(norm: str = "gn") -> nn.Sequential:
    def norm_layer(c):
        return nn.GroupNorm(4, c) if norm == "gn" else nn.BatchNorm2d(c)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), norm_layer(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), norm_layer(16), nn.ReLU(),
    )


def make_task(name: str, bn_groups: int = 1):
    """The task ``name`` on the tiny convnet; ``bn_groups`` is MoCo's (one process emulating ranks)."""
    from convssl.data.config import DataConfig
    from convssl.encoders import Encoder
    from convssl.tasks.registry import TaskSpec, build_task

    torch.manual_seed(0)
    encoder = Encoder(tiny_convnet("bn" if name == "moco" else "gn"), input_size=SIZE, in_chans=1)
    data = DataConfig(size=SIZE, channels=1, mean=(0.5,), std=(0.25,), batch_size=GLOBAL_BATCH)
    # views arrive already augmented (worker path): both sides see identical inputs
    section = {"name": name, "augment_on": "worker", **SECTIONS[name]}
    if name == "moco":
        section["bn_groups"] = bn_groups
    return build_task(TaskSpec.from_section(section), encoder, data)


def global_batches(task, steps: int = 2) -> list[list[torch.Tensor]]:
    """Views cut by the task's own loader transform from random images, collated."""
    gen = torch.Generator().manual_seed(123)
    transform = task.loader_transform()
    batches = []
    for step in range(steps):
        samples = [transform(torch.randint(0, 256, (1, SIZE + 4, SIZE + 4), dtype=torch.uint8, generator=gen),
                             torch.Generator().manual_seed(1000 * step + i))["img"] for i in range(GLOBAL_BATCH)]
        batches.append([torch.stack(views) for views in zip(*samples)])
    return batches


def train_two_steps(task, model, rank: int, world: int) -> dict:
    """SGD steps on this rank's slice; returns losses, step-1 gradients and task state."""
    from convssl import dist

    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.5)
    b = GLOBAL_BATCH // world
    record = {"loss": [], "grads": None}
    batches = global_batches(task)
    for step, views in enumerate(batches):
        out = model({"img": [v[rank * b:(rank + 1) * b] for v in views]})
        opt.zero_grad()
        out["loss"].backward()
        record["loss"].append(float(dist.all_reduce_mean(out["loss"].detach())))
        if step == 0:
            record["grads"] = {n: p.grad.detach().clone() for n, p in task.named_parameters()
                               if p.grad is not None}
        opt.step()
        task.after_step(step, len(batches))
    record["state"] = {k: v.detach().clone() for k, v in task.state_dict().items()}
    return record


def main(out_path: str, names: list[str]) -> None:
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel as DDP

    tdist.init_process_group("gloo")
    rank, world = tdist.get_rank(), tdist.get_world_size()
    results = {}
    for name in names:
        task = make_task(name)
        results[name] = train_two_steps(task, DDP(task), rank, world)
    if rank == 0:
        torch.save(results, out_path)
    tdist.barrier()
    tdist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or list(SECTIONS))
