"""From the loader's uint8 view to the encoder's input: photometric augmentation (when it
runs on the device) and normalization. Shared by the contrastive tasks."""

from __future__ import annotations

import torch

from convssl.views.normalize import normalize
from convssl.views.photometric import PhotometricView, color_augment
from convssl.views.photometric_config import ColorAugConfig


def prepare_view(img_BCHW: torch.Tensor, augment: ColorAugConfig | None, mean, std) -> torch.Tensor:
    """uint8 (or 0..1 float) ``[B, C, H, W]`` -> augmented (if ``augment``), normalized float."""
    x = img_BCHW.float() / 255.0 if img_BCHW.dtype == torch.uint8 else img_BCHW.float()
    if augment is not None:
        x = color_augment(x, augment)
    return normalize(x, mean, std)


class ViewAugment:
    """Where a contrastive task's photometric augmentation runs, and the view prep.

    ``augment_on == "device"``: batched on the training device in ``prepare``;
    ``"worker"``: per sample in the loader workers via ``worker_transform()``.
    """

    def __init__(self, augment: ColorAugConfig, augment_on: str, data):
        self.augment, self.augment_on, self.data = augment, augment_on, data

    def worker_transform(self) -> PhotometricView | None:
        """Per-view transform for the loader workers, or None when augmenting on the device.

        With ``augment_on: worker`` the loader must apply it to each uint8 view after the
        crop; otherwise the views reach the task with no photometric augmentation at all.
        """
        return PhotometricView(self.augment) if self.augment_on == "worker" else None

    def prepare(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        """uint8 view -> augmented (when on the device), normalized float input."""
        augment = self.augment if self.augment_on == "device" else None
        return prepare_view(img_BCHW, augment, self.data.mean, self.data.std)
