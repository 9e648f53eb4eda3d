"""Multi-crop views: a few large (global) crops and several small (local) ones per image.

Caron et al. 2020 (SwAV, sec. 3.2) and 2021 (DINO, sec. 3.1): "2 global views at
resolution 224 covering a large area (> 50%) of the original image, and several local views
of resolution 96 covering only small areas (< 50%)". The crops are cut in the loader's
workers (``MultiCrop`` is a sample transform, every choice drawn from the sample's own
generator); on the device, ``encode_by_resolution`` runs a network once per group of
same-sized views (the global crops in one pass, the local crops in another), as DINO's
``MultiCropWrapper`` does, so BatchNorm sees each resolution group as one batch.

With ``local_crops: 0`` a task's views are exactly the two crops of ``crop_views(data, 2)``
(the same draws from the generator), so every task takes the option at no cost.

Legend: C channels, B batch, V views, F features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from convssl.errors import ConfigError
from convssl.views.crop_views import CropViews
from convssl.views.crops import RandomResizedCrop


@dataclass(frozen=True, kw_only=True)
class MultiCropConfig:
    """The crops a task cuts from each image (a task Config's ``crops:`` entry).

    global_crops: crops at ``data.size`` with ``data.scale`` (2: the two views of SimCLR,
        BYOL, Barlow Twins, VICReg; DINO's teacher sees only these).
    local_crops: extra small crops (0: none; DINO ResNet-50: 6).
    local_size: side of the local crops in pixels (DINO and SwAV: 96 at 224 px).
    local_scale: their area range as a fraction of the image (DINO ResNet-50: 0.05-0.14,
        with ``data.scale`` 0.14-1 for the global crops).
    """

    global_crops: int = 2
    local_crops: int = 0
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.14)

    def __post_init__(self):
        if self.global_crops < 1:
            raise ValueError(f"global_crops must be >= 1, got {self.global_crops}")
        if self.local_crops < 0:
            raise ValueError(f"local_crops must be >= 0, got {self.local_crops}")
        if self.local_size < 1:
            raise ValueError(f"local_size must be >= 1, got {self.local_size}")
        if not 0 < self.local_scale[0] <= self.local_scale[1] <= 1:
            raise ValueError(f"local_scale must satisfy 0 < min <= max <= 1, got {self.local_scale}")

    @property
    def views(self) -> int:
        return self.global_crops + self.local_crops


class MultiCrop:
    """``(img_uint8_CHW, generator) -> {"img": [global_1, ..., global_G, local_1, ..., local_L]}``.

    The global crops first (``data.size``, ``data.scale``), then the local ones
    (``local_size``, ``local_scale``); same ratio range and flip; ``augment`` (a per-view
    photometric transform, or None when it runs on the device) after every crop.
    """

    def __init__(self, global_views: CropViews, local_views: CropViews | None):
        self.global_views, self.local_views = global_views, local_views

    @property
    def augment(self) -> Callable | None:
        """The per-view photometric transform the workers apply (None when it runs on the device)."""
        return self.global_views.augment

    def __call__(self, img_CHW: torch.Tensor, generator: torch.Generator) -> dict:
        views = self.global_views(img_CHW, generator)["img"]
        if self.local_views is not None:
            views = views + self.local_views(img_CHW, generator)["img"]
        return {"img": views}


def check_crop_sizes(crops: MultiCropConfig, min_side: int, task: str) -> None:
    """A clear error, when the task is built, for local crops the encoder cannot take
    (``min_side``: its total reduction), instead of one at the first step."""
    if crops.local_crops and crops.local_size < min_side:
        raise ConfigError(f"{task}: task.crops.local_size {crops.local_size} is smaller than the encoder's "
                          f"total reduction {min_side}; use local_size >= {min_side} or local_crops: 0")


def multi_crop(data, crops: MultiCropConfig, augment: Callable | None = None) -> MultiCrop:
    """The loader views of a recipe's ``data`` section and a task's ``crops``."""
    global_crop = RandomResizedCrop(data.size, scale=data.scale, ratio=data.ratio, flip=data.flip)
    local_views = None
    if crops.local_crops:
        local_crop = RandomResizedCrop(crops.local_size, scale=crops.local_scale, ratio=data.ratio, flip=data.flip)
        local_views = CropViews(local_crop, crops.local_crops, augment)
    return MultiCrop(CropViews(global_crop, crops.global_crops, augment), local_views)


def view_pairs(crops: MultiCropConfig) -> list[tuple[int, int]]:
    """The pairs (global view i, later view j) a loss symmetric in its two views is averaged
    over (Barlow Twins, VICReg): ``[(0, 1)]`` for two crops, every local crop paired with
    every global one."""
    return [(i, j) for i in range(crops.global_crops) for j in range(i + 1, crops.views)]


def encode_by_resolution(fn: Callable[[torch.Tensor], torch.Tensor],
                         views: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[fn(v) for v in views]``, computed with one call of ``fn`` per run of consecutive
    views of the same size (DINO's ``MultiCropWrapper``): ``fn`` sees the concatenated
    ``[k*B, C, H, W]`` group and its output is split back into ``k`` chunks of ``B``."""
    out: list[torch.Tensor] = []
    start = 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
            end += 1
        group = views[start:end]
        out.extend(fn(torch.cat(group)).split([len(v) for v in group]))
        start = end
    return out
