"""Loader-side views: what the workers cut from each decoded image for a task.

A *sample transform* is ``(img_uint8_CHW, torch.Generator) -> dict[str, Tensor | list[Tensor]]``;
the reader merges its dict into the sample (beside ``key``, and ``cls`` for labeled
shards), and batching stacks each entry (a list stacks per element). Tasks declare theirs
through ``loader_transform()`` (see ``convssl.tasks``); the default is ``CropViews``:
``{"img": [view, ...]}``, so ``batch["img"]`` is always a list of uint8 ``[B, C, H, W]``.

Legend: C channels, H/W size.
"""

from __future__ import annotations

from typing import Callable

import torch

from convssl.views.crops import RandomResizedCrop

SampleTransform = Callable[[torch.Tensor, torch.Generator], dict]


class CropViews:
    """``views`` random resized crops (and flips) of one image, each then ``augment``-ed.

    Returns ``{"img": [view_CHW, ...]}`` (a list even for one view). ``augment`` is an
    optional per-view transform ``(view_uint8_CHW, generator) -> view_uint8_CHW`` (e.g.
    ``convssl.views.photometric.PhotometricView``) that draws from the sample's own
    generator, so each sample's augmentation is fixed by (seed, epoch, position) and a
    resumed run reproduces it; torch's global RNG is never touched.
    """

    def __init__(self, crop: RandomResizedCrop, views: int = 1, augment: Callable | None = None):
        if views < 1:
            raise ValueError(f"views must be at least 1, not {views}")
        self.crop, self.views, self.augment = crop, views, augment

    def __call__(self, img_CHW: torch.Tensor, generator: torch.Generator) -> dict:
        crops = [self.crop(img_CHW, generator) for _ in range(self.views)]
        if self.augment is not None:
            crops = [self.augment(c, generator) for c in crops]
        return {"img": crops}


def crop_views(data, views: int = 1, augment: Callable | None = None) -> CropViews:
    """The default loader views of a recipe's ``data`` section: ``views`` random resized
    crops at ``data.size`` with its scale, ratio and flip."""
    crop = RandomResizedCrop(data.size, scale=data.scale, ratio=data.ratio, flip=data.flip)
    return CropViews(crop, views, augment)


class Named:
    """Wraps a plain ``(img, generator) -> Tensor`` transform as a sample transform
    ``{name: tensor}`` (evaluation: ``Named(ResizeCenterCrop(size))``)."""

    def __init__(self, transform: Callable, name: str = "img"):
        self.transform, self.name = transform, name

    def __call__(self, img_CHW: torch.Tensor, generator: torch.Generator) -> dict:
        return {self.name: self.transform(img_CHW, generator)}
