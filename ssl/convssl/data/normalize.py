"""uint8 images -> normalised float tensors (done by tasks, on the training device)."""

from __future__ import annotations

import torch


def normalize(x_BCHW: torch.Tensor, mean, std) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel; uint8 or 0..1 float input."""
    if x_BCHW.ndim != 4 or len(mean) != x_BCHW.shape[1] or len(std) != x_BCHW.shape[1]:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for a batch of shape {tuple(x_BCHW.shape)}")
    x = x_BCHW.float()
    if x_BCHW.dtype == torch.uint8:
        x = x / 255.0
    mean_C = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_C = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_C) / std_C


def denormalize(x_BCHW: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of ``normalize`` into 0..1 (clamped), for pictures."""
    mean_C = torch.as_tensor(mean, dtype=x_BCHW.dtype, device=x_BCHW.device).view(1, -1, 1, 1)
    std_C = torch.as_tensor(std, dtype=x_BCHW.dtype, device=x_BCHW.device).view(1, -1, 1, 1)
    return (x_BCHW * std_C + mean_C).clamp(0, 1)
