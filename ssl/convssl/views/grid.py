"""A 3x3 grid of jittered square patches cut from one image (context prediction, jigsaw).

The image (side ``size``) is split into ``grid x grid`` cells of side ``cell = size //
grid`` (the leftover pixels are split evenly on both borders). Each cell holds one
``patch``-px square at a random offset in ``[0, jitter]`` per axis, placed so that the
jitter range is centred in the cell. Two horizontally or vertically adjacent patches are
therefore always at least ``cell - patch - jitter >= gap`` pixels apart, whatever the
jitter draws: the gap that stops a network from matching low-level edges across patch
borders (Doersch et al. 2015, sec. 3: "we include a gap of approximately half the patch
width between patches... and randomly jitter each patch location by up to 7 pixels").

``patch``, ``gap`` and ``jitter`` are given as fractions of the cell, so one setting
serves 64 px Fashion-MNIST and 255 px ImageNet crops alike.

Legend: C channels, S image side, P patch side, N = grid * grid cells in reading order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from convssl.errors import ConfigError, EncoderError


@dataclass(frozen=True)
class GridGeometry:
    """Pixel layout of the grid on an image of side ``size``."""

    size: int
    grid: int
    cell: int
    patch: int
    gap: int
    jitter: int

    @property
    def margin(self) -> int:
        """Offset of the grid's first cell from the image border."""
        return (self.size - self.grid * self.cell) // 2

    @property
    def base(self) -> int:
        """Offset of a patch with zero jitter from its cell's corner."""
        return (self.cell - self.patch - self.jitter) // 2


def grid_geometry(size: int, patch: float, gap: float, jitter: float, grid: int = 3,
                  what: str = "patch") -> GridGeometry:
    """Pixel geometry for fractions of the cell: ``patch`` rounded, ``gap`` rounded up
    (it is a promise), ``jitter`` rounded and capped by what the cell has left."""
    cell = size // grid
    patch_px, gap_px = round(patch * cell), math.ceil(gap * cell - 1e-9)
    if not 0 < patch <= 1 or gap < 0 or jitter < 0 or patch_px < 1 or patch_px + gap_px > cell:
        raise ConfigError(
            f"task.{what}={patch} and task.gap={gap} (fractions of the {cell} px cell of a {size} px image) "
            f"leave no room: need 0 < {what} and {what} + gap <= 1"
        )
    return GridGeometry(size, grid, cell, patch_px, gap_px, min(round(jitter * cell), cell - patch_px - gap_px))


def check_patch_fits(geometry: GridGeometry, minimum: int, what: str, fraction: float) -> None:
    """An ``EncoderError`` when patches are smaller than the encoder's ``minimum`` input side.

    ``minimum`` is the encoder's total reduction (``encoder.reductions[-1]``: its last
    stage must keep >= 1 pixel); the message names the smallest ``data.size`` whose
    patches would fit.
    """
    if geometry.patch >= minimum:
        return
    size = geometry.size
    while round(fraction * (size // geometry.grid)) < minimum:
        size += 1
    raise EncoderError(
        f"the {what} side is {geometry.patch} px ({fraction} of the {geometry.cell} px cell of data.size "
        f"{geometry.size}), smaller than the encoder's minimum input size {minimum} px (its total reduction); "
        f"use data.size >= {size}, a larger task.{what}, or an encoder with less reduction "
        f"(e.g. encoder.small_input=true)"
    )


def patch_boxes(geometry: GridGeometry, generator: torch.Generator) -> list[tuple[int, int]]:
    """(top, left) of each cell's patch in reading order, jittered by ``generator``."""
    g = geometry
    offsets = torch.randint(0, g.jitter + 1, (g.grid * g.grid, 2), generator=generator).tolist()
    return [(g.margin + (i // g.grid) * g.cell + g.base + dy, g.margin + (i % g.grid) * g.cell + g.base + dx)
            for i, (dy, dx) in enumerate(offsets)]


def cut_patches(img_CSS: torch.Tensor, geometry: GridGeometry,
                boxes: list[tuple[int, int]]) -> torch.Tensor:
    """The patches at ``boxes`` stacked: ``[N, C, P, P]`` (contiguous copies)."""
    p = geometry.patch
    return torch.stack([img_CSS[:, t:t + p, l:l + p] for t, l in boxes]).contiguous()
