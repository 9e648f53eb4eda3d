"""Normalisation over visible positions only (SparK's sparse BatchNorm, and GroupNorm).

Functions, so the sparse layers and SparK's densify norms share one implementation and
the mask is an explicit argument. Statistics are computed in float32 from masked sums
(two passes: mean, then squared deviations) and, for synchronised BatchNorm, summed over
ranks with ``dist.all_reduce`` (differentiable), which works on CPU (gloo) and GPU alike,
unlike ``nn.SyncBatchNorm``.

Legend: B batch, C channels, h/w map size, G groups; mask_B1hw True = visible.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from convssl import dist


def sparse_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x_BChw: torch.Tensor,
                      mask_B1hw: torch.Tensor, *, sync: bool) -> torch.Tensor:
    """``bn`` applied as if the visible positions were the whole batch; masked positions -> 0.

    Training (or no running stats): the mean and biased variance of each channel over all
    visible positions of the batch (of all ranks when ``sync`` and distributed) normalise
    the input; running statistics are updated from them like ``nn.BatchNorm2d`` does
    (unbiased variance, ``momentum``, or a cumulative average when ``momentum is None``).
    Evaluation: the per-position affine map of the running statistics.
    """
    m_B1hw = mask_B1hw.to(torch.float32)
    weight, bias = bn.weight, bn.bias
    use_batch_stats = bn.training or bn.running_mean is None
    if not use_batch_stats:
        y = F.batch_norm(x_BChw, bn.running_mean, bn.running_var, weight, bias, False, 0.0, bn.eps)
        return y * m_B1hw.to(y.dtype)

    x = x_BChw.float()
    reduce = dist.all_reduce_sum_with_grad if sync else (lambda t: t)
    count_and_sum = reduce(torch.cat([m_B1hw.sum().view(1), (x * m_B1hw).sum((0, 2, 3))]))
    count = count_and_sum[0].detach().clamp(min=1.0)
    mean_C = count_and_sum[1:] / count
    centred = (x - mean_C.view(1, -1, 1, 1)) * m_B1hw
    var_C = reduce(centred.pow(2).sum((0, 2, 3))) / count

    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = (1.0 / float(bn.num_batches_tracked)) if bn.momentum is None else bn.momentum
            n = float(count)
            unbiased_C = var_C * (n / max(n - 1.0, 1.0))
            bn.running_mean.lerp_(mean_C.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(unbiased_C.to(bn.running_var.dtype), momentum)

    scale_C = torch.rsqrt(var_C + bn.eps)
    if weight is not None:
        scale_C = scale_C * weight.float()
    y = centred * scale_C.view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.float().view(1, -1, 1, 1) * m_B1hw
    return y.to(x_BChw.dtype)


def sparse_group_norm(x_BChw: torch.Tensor, mask_B1hw: torch.Tensor, num_groups: int,
                      weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """GroupNorm whose per-image, per-group statistics cover visible positions only.

    With ``num_groups == C`` this is InstanceNorm (without running statistics).
    """
    B, C, h, w = x_BChw.shape
    x = x_BChw.float().view(B, num_groups, C // num_groups, h, w)
    m = mask_B1hw.to(torch.float32).view(B, 1, 1, h, w)
    count_BG = (m.sum((2, 3, 4)) * (C // num_groups)).clamp(min=1.0)  # [B, 1]
    mean_BG = (x * m).sum((2, 3, 4)) / count_BG
    centred = (x - mean_BG.view(B, num_groups, 1, 1, 1)) * m
    var_BG = centred.pow(2).sum((2, 3, 4)) / count_BG
    y = (centred * torch.rsqrt(var_BG + eps).view(B, num_groups, 1, 1, 1)).view(B, C, h, w)
    m = m.view(B, 1, h, w)
    if weight is not None:
        y = y * weight.float().view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.float().view(1, -1, 1, 1) * m
    return y.to(x_BChw.dtype)


def masked_mean(x_BChw: torch.Tensor, mask_B1hw: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean over visible positions: [B, C, 1, 1]."""
    m = mask_B1hw.to(x_BChw.dtype)
    return (x_BChw * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp(min=1.0)


def masked_max(x_BChw: torch.Tensor, mask_B1hw: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel max over visible positions: [B, C, 1, 1]."""
    return x_BChw.masked_fill(~mask_B1hw.bool(), float("-inf")).amax((2, 3), keepdim=True)
