"""Distributed helpers in one place: rank info, process group setup, gathering.

Legend: B per-rank batch, N = world_size * B.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_env() -> DistInfo:
    """Rank info as set by torchrun (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def training_device(device: str | None) -> torch.device:
    """The device a training process runs on: ``device`` (``cpu``, ``cuda``, ``cuda:1``), or
    this process's GPU when there is one. A bare ``cuda`` becomes ``cuda:LOCAL_RANK``: each
    torchrun rank its own GPU, and ``torch.cuda.set_device`` and DDP's ``device_ids`` need
    an index (``--device cuda`` crashed in ``set_device`` before)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", from_env().local_rank)
    return dev


def init(device: torch.device) -> DistInfo:
    """Join the process group torchrun prepared (NCCL on GPU, gloo on CPU)."""
    info = from_env()
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_enabled() else 1


def rank() -> int:
    return dist.get_rank() if is_enabled() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns each rank its slice of the summed gradient.

    Every rank computes a loss on the gathered tensor, and DDP averages parameter
    gradients over ranks; so the gradient of a rank's own slice must be the SUM of that
    slice's gradients over all ranks (all_reduce), which after DDP's division by the
    world size equals the single-process gradient of the mean loss.
    """

    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def all_gather_with_grad(x_BD: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order ([N, ...]); gradients flow back."""
    return _GatherWithGrad.apply(x_BD) if is_enabled() else x_BD


@torch.no_grad()
def all_gather_no_grad(x_BD: torch.Tensor) -> torch.Tensor:
    if not is_enabled():
        return x_BD
    out = [torch.empty_like(x_BD) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x_BD.contiguous())
    return torch.cat(out)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (for logging); a copy, the input is untouched."""
    if not is_enabled():
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` itself when not distributed.
    For decisions one rank takes for all (which checkpoint to resume)."""
    if not is_enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_enabled():
        dist.barrier()


class _AllReduceSumWithGrad(torch.autograd.Function):
    """all_reduce(SUM) whose backward is again an all_reduce(SUM) of the gradients.

    y = sum_r x_r is used by every rank's loss, so d(sum_r L_r)/dx_r = sum_r dL_r/dy;
    after DDP's averaging that is the gradient of the mean loss (as in ``_GatherWithGrad``).
    """

    @staticmethod
    def forward(ctx, x):
        y = x.clone().contiguous()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone().contiguous()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks, differentiable (cross-rank norm statistics); ``x`` when not distributed."""
    return _AllReduceSumWithGrad.apply(x) if is_enabled() else x
