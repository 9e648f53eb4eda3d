"""Turn uint8 image batches into normalized float tensors.

Legend: B batch, C channels, H height, W width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x_uint8_BCHW: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel; ``mean`` and ``std`` are on the 0..1 scale.

    Works on any device; keep the batch uint8 until it is on the accelerator so the
    host-to-device copy moves a quarter of the bytes.
    """
    if x_uint8_BCHW.ndim != 4 or x_uint8_BCHW.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (B, C, H, W) batch, got {x_uint8_BCHW.dtype} {tuple(x_uint8_BCHW.shape)}")
    channels = x_uint8_BCHW.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {channels} channels")
    mean_C111 = torch.tensor(mean, dtype=dtype, device=x_uint8_BCHW.device).view(1, -1, 1, 1)
    std_C111 = torch.tensor(std, dtype=dtype, device=x_uint8_BCHW.device).view(1, -1, 1, 1)
    return (x_uint8_BCHW.to(dtype) / 255 - mean_C111) / std_C111
