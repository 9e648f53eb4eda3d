"""From the loader's uint8 view to the encoder's input: photometric augmentation (when it
runs on the device) and normalization. Shared by the contrastive tasks."""

from __future__ import annotations

import torch

from convssl.augment.config import ColorAugConfig
from convssl.augment.photometric import color_augment
from convssl.data.normalize import normalize


def prepare_view(img_BCHW: torch.Tensor, augment: ColorAugConfig | None, mean, std) -> torch.Tensor:
    """uint8 (or 0..1 float) ``[B, C, H, W]`` -> augmented (if ``augment``), normalized float."""
    x = img_BCHW.float() / 255.0 if img_BCHW.dtype == torch.uint8 else img_BCHW.float()
    if augment is not None:
        x = color_augment(x, augment)
    return normalize(x, mean, std)
