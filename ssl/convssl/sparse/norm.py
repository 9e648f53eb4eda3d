"""Normalisation over visible positions only (SparK's sparse BatchNorm, and GroupNorm).

Functions, so the sparse layers and SparK's densify norms share one implementation and
the mask is an explicit argument. Statistics are computed from the visible
positions (two passes: mean, then squared deviations), in float32 for half precision inputs and, for synchronised BatchNorm, summed over
ranks with ``dist.all_reduce`` (differentiable), which works on CPU (gloo) and GPU alike,
unlike ``nn.SyncBatchNorm``.

Legend: B batch, C channels, h/w map size, G groups; mask_B1hw True = visible.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from convssl import dist


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics in float32 for half precision inputs; float32 and float64 stay as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def sparse_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x_BChw: torch.Tensor,
                      mask_B1hw: torch.Tensor, *, sync: bool,
                      sites: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``bn`` applied as if the visible positions were the whole batch; masked positions -> 0.

    Training (or no running stats): the mean and biased variance of each channel over all
    visible positions of the batch (of all ranks when ``sync`` and distributed) normalise
    the input; running statistics are updated from them like ``nn.BatchNorm2d`` does
    (unbiased variance, ``momentum``, or a cumulative average when ``momentum is None``).
    Evaluation: the per-position affine map of the running statistics.

    Only the visible rows are gathered and normalised ([N, C]), then scattered into a zero
    map, so the layer allocates one full-size tensor (its output); no value is read back to
    the host. ``sites``: the (b, y, x) visible positions when the caller has them already
    (``MaskContext.sites``); otherwise they are taken from ``mask_B1hw``.
    """
    weight, bias = bn.weight, bn.bias
    use_batch_stats = bn.training or bn.running_mean is None
    if not use_batch_stats:
        y = F.batch_norm(x_BChw, bn.running_mean, bn.running_var, weight, bias, False, 0.0, bn.eps)
        return y * mask_B1hw.to(y.dtype)

    b, yy, xx = sites if sites is not None else mask_B1hw[:, 0].nonzero(as_tuple=True)
    dt = compute_dtype(x_BChw.dtype)
    x_NC = x_BChw.permute(0, 2, 3, 1)[b, yy, xx].to(dt)  # visible rows only
    reduce = dist.all_reduce_sum_with_grad if sync else (lambda t: t)
    count_and_sum = reduce(torch.cat([x_NC.new_full((1,), x_NC.shape[0]), x_NC.sum(0)]))
    count = count_and_sum[0].detach().clamp(min=1.0)
    mean_C = count_and_sum[1:] / count
    centred_NC = x_NC - mean_C
    var_C = reduce(centred_NC.pow(2).sum(0)) / count

    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = (1.0 / bn.num_batches_tracked.to(mean_C.dtype)) if bn.momentum is None else bn.momentum
            unbiased_C = var_C * (count / (count - 1.0).clamp(min=1.0))
            bn.running_mean.lerp_(mean_C.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(unbiased_C.to(bn.running_var.dtype), momentum)

    scale_C = torch.rsqrt(var_C + bn.eps)
    if weight is not None:
        scale_C = scale_C * weight.to(dt)
    y_NC = centred_NC * scale_C
    if bias is not None:
        y_NC = y_NC + bias.to(dt)
    out = torch.zeros_like(x_BChw)  # the input's memory layout: channels-last stays channels-last
    out.permute(0, 2, 3, 1).index_put_((b, yy, xx), y_NC.to(x_BChw.dtype))
    return out


def sparse_group_norm(x_BChw: torch.Tensor, mask_B1hw: torch.Tensor, num_groups: int,
                      weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """GroupNorm whose per-image, per-group statistics cover visible positions only.

    With ``num_groups == C`` this is InstanceNorm (without running statistics).
    """
    B, C, h, w = x_BChw.shape
    dt = compute_dtype(x_BChw.dtype)
    x = x_BChw.to(dt).view(B, num_groups, C // num_groups, h, w)
    m = mask_B1hw.to(dt).view(B, 1, 1, h, w)
    count_BG = (m.sum((2, 3, 4)) * (C // num_groups)).clamp(min=1.0)  # [B, 1]
    mean_BG = (x * m).sum((2, 3, 4)) / count_BG
    centred = (x - mean_BG.view(B, num_groups, 1, 1, 1)) * m
    var_BG = centred.pow(2).sum((2, 3, 4)) / count_BG
    y = (centred * torch.rsqrt(var_BG + eps).view(B, num_groups, 1, 1, 1)).view(B, C, h, w)
    m = m.view(B, 1, h, w)
    if weight is not None:
        y = y * weight.to(dt).view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.to(dt).view(1, -1, 1, 1) * m
    return y.to(x_BChw.dtype)


def masked_mean(x_BChw: torch.Tensor, mask_B1hw: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean over visible positions: [B, C, 1, 1]."""
    m = mask_B1hw.to(x_BChw.dtype)
    return (x_BChw * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp(min=1.0)


def masked_max(x_BChw: torch.Tensor, mask_B1hw: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel max over visible positions: [B, C, 1, 1]."""
    return x_BChw.masked_fill(~mask_B1hw.bool(), float("-inf")).amax((2, 3), keepdim=True)
