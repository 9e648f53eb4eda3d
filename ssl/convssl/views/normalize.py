"""uint8 images -> normalised float tensors (done by tasks, on the training device)."""

from __future__ import annotations

import functools

import torch


def normalize(x_BCHW: torch.Tensor, mean, std) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel; uint8 or 0..1 float input.

    Computed as one fused ``x * scale + shift``; the per-channel constants are made once
    per (mean, std, device), not copied to the device on every call.
    """
    if x_BCHW.ndim != 4 or len(mean) != x_BCHW.shape[1] or len(std) != x_BCHW.shape[1]:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for a batch of shape {tuple(x_BCHW.shape)}")
    peak = 255.0 if x_BCHW.dtype == torch.uint8 else 1.0
    scale_C, shift_C = _affine(tuple(map(float, mean)), tuple(map(float, std)), peak, x_BCHW.device)
    return torch.addcmul(shift_C, x_BCHW.float(), scale_C)


@functools.lru_cache(maxsize=64)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], peak: float,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale = 1 / (peak * std)``, ``shift = -mean / std`` as [1, C, 1, 1] float32 tensors
    on ``device``; cached (read-only constants), so a training step copies nothing."""
    scale_C = torch.tensor([1.0 / (peak * s) for s in std], device=device).view(1, -1, 1, 1)
    shift_C = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(1, -1, 1, 1)
    return scale_C, shift_C


def denormalize(x_BCHW: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of ``normalize`` into 0..1 (clamped), for pictures."""
    mean_C = torch.as_tensor(mean, dtype=x_BCHW.dtype, device=x_BCHW.device).view(1, -1, 1, 1)
    std_C = torch.as_tensor(std, dtype=x_BCHW.dtype, device=x_BCHW.device).view(1, -1, 1, 1)
    return (x_BCHW * std_C + mean_C).clamp(0, 1)
