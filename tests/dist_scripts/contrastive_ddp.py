"""Two training steps of SimCLR and MoCo, in one process or under torchrun (gloo, CPU).

Run by tests/test_contrastive.py as
    torchrun --nproc-per-node 2 --standalone tests/dist_scripts/contrastive_ddp.py OUT.pt
Each rank takes its slice of the same global batch; rank 0 saves what it saw (losses
averaged over ranks, DDP-averaged gradients, MoCo's queue and momentum encoder) for the
test to compare with one process on the whole batch. The functions are imported by the
test for that single-process reference, so both sides run the same code.

SimCLR uses a GroupNorm convnet and a head without BN (no batch statistics, SyncBN
being GPU-only); MoCo a
BatchNorm convnet, whose single-process reference uses ``bn_groups = world_size``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn

GLOBAL_BATCH = 8
SIZE = 16


def tiny_convnet(norm: str) -> nn.Sequential:
    def norm_layer(c):
        return nn.GroupNorm(4, c) if norm == "gn" else nn.BatchNorm2d(c)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), norm_layer(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), norm_layer(16), nn.ReLU(),
    )


def make_task(name: str, bn_groups: int = 1):
    from convssl.data.config import DataConfig
    from convssl.encoders import Encoder
    from convssl.tasks.registry import TaskSpec, build_task

    torch.manual_seed(0)
    encoder = Encoder(tiny_convnet("gn" if name == "simclr" else "bn"), input_size=SIZE, in_chans=1)
    data = DataConfig(size=SIZE, channels=1, mean=(0.5,), std=(0.25,), batch_size=GLOBAL_BATCH)
    # views arrive already augmented (worker path): both sides see identical inputs
    section = {"name": name, "augment_on": "worker", "proj_hidden_dim": 32, "proj_out_dim": 8}
    if name == "simclr":
        section |= {"temperature": 0.5, "proj_batch_norm": False}  # no per-rank BN anywhere
    else:
        section |= {"queue_size": 20, "momentum": 0.9, "temperature": 0.2, "bn_groups": bn_groups}
    return build_task(TaskSpec.from_section(section), encoder, data)


def global_batches(steps: int = 2) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(123)
    return [[torch.randint(0, 256, (GLOBAL_BATCH, 1, SIZE, SIZE), dtype=torch.uint8, generator=gen)
             for _ in range(2)] for _ in range(steps)]


def train_two_steps(task, model, rank: int, world: int) -> dict:
    """SGD steps on this rank's slice; returns losses, step-1 gradients and task state."""
    from convssl import dist

    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.5)
    b = GLOBAL_BATCH // world
    record = {"loss": [], "grads": None}
    for step, views in enumerate(global_batches()):
        out = model({"img": [v[rank * b:(rank + 1) * b] for v in views]})
        opt.zero_grad()
        out["loss"].backward()
        record["loss"].append(float(dist.all_reduce_mean(out["loss"].detach())))
        if step == 0:
            record["grads"] = {n: p.grad.detach().clone() for n, p in task.named_parameters()
                               if p.grad is not None}
        opt.step()
        if hasattr(task, "after_step"):
            task.after_step(step + 1, 2)
    record["state"] = {k: v.detach().clone() for k, v in task.state_dict().items()}
    return record


def main(out_path: str) -> None:
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel as DDP

    tdist.init_process_group("gloo")
    rank, world = tdist.get_rank(), tdist.get_world_size()
    results = {}
    for name in ("simclr", "moco"):
        task = make_task(name)
        results[name] = train_two_steps(task, DDP(task), rank, world)
    if rank == 0:
        torch.save(results, out_path)
    tdist.barrier()
    tdist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
