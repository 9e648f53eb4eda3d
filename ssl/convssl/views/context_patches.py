"""Context prediction's views (Doersch, Gupta, Efros, ICCV 2015): the centre patch of a
3x3 grid and ``pairs`` of its 8 neighbours, each labelled with its position.

Labels 0..7 are the neighbours in reading order, skipping the centre::

    0 1 2
    3 . 4
    5 6 7

Legend: K = pairs per image, C channels, P patch side.
"""

from __future__ import annotations

import torch

from convssl.views.crops import RandomResizedCrop
from convssl.views.grid import GridGeometry, cut_patches, patch_boxes
from convssl.views.patch_shortcuts import down_up_sample, drop_colours, grayscale

CENTRE = 4
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)  # grid cell of label k, reading order without the centre


class ContextPatches:
    """Worker-side transform: ``{"patches": [1 + K, C, P, P] uint8 (centre first),
    "label": [K] int64}`` for ``pairs`` neighbours drawn without replacement.

    The shortcut countermeasures (``convssl.views.patch_shortcuts``), off by default:
    whole-image grayscale with probability ``grayscale_p``; per patch, colour dropping
    (``color_drop_p``) and down-then-up sampling (``downsample_p``, down to
    ``downsample_min`` of the side).
    """

    def __init__(self, crop: RandomResizedCrop, geometry: GridGeometry, *, pairs: int, grayscale_p: float = 0.0,
                 color_drop_p: float = 0.0, downsample_p: float = 0.0, downsample_min: float = 0.1):
        self.crop, self.geometry, self.pairs = crop, geometry, pairs
        self.grayscale_p, self.color_drop_p = grayscale_p, color_drop_p
        self.downsample_p, self.downsample_min = downsample_p, downsample_min

    def __call__(self, img_CHW: torch.Tensor, generator: torch.Generator) -> dict:
        img = self.crop(img_CHW, generator)
        if self.grayscale_p > 0 and torch.rand((), generator=generator).item() < self.grayscale_p:
            img = grayscale(img)
        labels_K = torch.randperm(8, generator=generator)[: self.pairs]
        boxes = patch_boxes(self.geometry, generator)
        cells = [CENTRE] + [NEIGHBOURS[k] for k in labels_K.tolist()]
        patches = cut_patches(img, self.geometry, [boxes[c] for c in cells])
        patches = drop_colours(patches, self.color_drop_p, generator)
        patches = down_up_sample(patches, self.downsample_p, self.downsample_min, generator)
        return {"patches": patches, "label": labels_K}
