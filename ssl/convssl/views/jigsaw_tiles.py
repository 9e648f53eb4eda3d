"""Jigsaw's views (Noroozi & Favaro, ECCV 2016): the 9 tiles of a 3x3 grid, shuffled by
one permutation of a fixed set; the label is the permutation's index.

Legend: T = 9 tiles, C channels, P tile side, N permutations.
"""

from __future__ import annotations

import torch

from convssl.views.crops import RandomResizedCrop
from convssl.views.grid import GridGeometry, cut_patches, patch_boxes
from convssl.views.patch_shortcuts import grayscale


class JigsawTiles:
    """Worker-side transform: ``{"tiles": [9, C, P, P] uint8 shuffled, "label": r}`` with
    ``tiles[i] = grid_tile[perm_r[i]]``; whole-image grayscale with probability ``grayscale_p``."""

    def __init__(self, crop: RandomResizedCrop, geometry: GridGeometry, permutations_NT: torch.Tensor,
                 grayscale_p: float):
        self.crop, self.geometry, self.grayscale_p = crop, geometry, grayscale_p
        self.permutations = permutations_NT.tolist()

    def __call__(self, img_CHW: torch.Tensor, generator: torch.Generator) -> dict:
        img = self.crop(img_CHW, generator)
        if self.grayscale_p > 0 and torch.rand((), generator=generator).item() < self.grayscale_p:
            img = grayscale(img)
        boxes = patch_boxes(self.geometry, generator)
        label = int(torch.randint(0, len(self.permutations), (1,), generator=generator))
        tiles = cut_patches(img, self.geometry, [boxes[cell] for cell in self.permutations[label]])
        return {"tiles": tiles, "label": label}
