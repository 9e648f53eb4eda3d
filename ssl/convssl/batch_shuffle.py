"""Shuffle-BN: run a BN network on a batch permuted across ranks, then undo the permutation.

MoCo (He et al. 2020, sec. 3.3): with per-GPU BN, a query and its positive key computed
on the same device share batch statistics, a shortcut that lets the model "cheat". The
key encoder therefore sees the global batch shuffled across GPUs (gather, permute,
scatter, forward, gather, unpermute).

``groups`` further splits each rank's chunk into separate forwards, each with its own BN
statistics. That emulates ``world_size * groups`` GPUs in one process (the trick of MoCo's
CIFAR demo, whose SplitBatchNorm splits the batch into 8 groups): one process with
``groups=G`` computes exactly what G ranks with ``groups=1`` compute, given the same
permutation. All ranks derive the permutation from the same seed, so no broadcast is needed.

Legend: B per-rank batch, N global batch (world_size * B).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from convssl import dist


def grouped_forward(fn: Callable[[torch.Tensor], torch.Tensor], x_B: torch.Tensor,
                    groups: int) -> torch.Tensor:
    """``fn`` over ``groups`` contiguous chunks of the batch (separate BN statistics each)."""
    if groups <= 1:
        return fn(x_B)
    if x_B.shape[0] < 2 * groups:
        raise ValueError(
            f"bn_groups={groups} needs at least {2 * groups} samples per rank for batch "
            f"statistics, got {x_B.shape[0]}; lower bn_groups or raise data.batch_size"
        )
    return torch.cat([fn(chunk) for chunk in x_B.tensor_split(groups)])


def shuffle_permutation(n: int, seed: int, device: torch.device) -> torch.Tensor:
    """A random permutation of ``n`` that is the same on every rank (same seed), drawn on
    ``device`` itself (no host-to-device copy in the step)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randperm(n, generator=gen, device=device)


@torch.no_grad()
def shuffled_forward(fn: Callable[[torch.Tensor], torch.Tensor], x_B: torch.Tensor, *,
                     groups: int, seed: int) -> torch.Tensor:
    """``fn(x)`` for this rank's samples, computed on a batch shuffled across ranks.

    Every rank must pass the same batch size and seed. Without gradients (keys only).
    """
    x_N = dist.all_gather_no_grad(x_B)
    n, b, r = x_N.shape[0], x_B.shape[0], dist.rank()
    perm_N = shuffle_permutation(n, seed, x_B.device)
    y_mine = grouped_forward(fn, x_N[perm_N[r * b:(r + 1) * b]], groups)
    y_N = dist.all_gather_no_grad(y_mine)  # rows in permuted order
    return y_N[torch.argsort(perm_N)][r * b:(r + 1) * b]
