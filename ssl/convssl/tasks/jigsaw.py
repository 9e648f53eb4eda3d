"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016).

The loader's workers cut a random resized crop into a 3x3 grid of jittered tiles
(``convssl.views.jigsaw_tiles``), draw one permutation r of a fixed set and hand the tiles over
shuffled: ``tiles[i] = grid_tile[perm_r[i]]`` for slot i; the label is r. The shared
encoder embeds each tile (the paper's "context-free network": siamese trunks up to
fc6), the per-tile features are concatenated in slot order, and an MLP (fc7, fc8)
classifies the permutation; cross-entropy.

The permutation set (``hamming_permutations``) is chosen greedily for maximal Hamming
distance from all 9! permutations, its size configurable (default 100, VISSL's best
ImageNet setting: 48.6 linear top-1 vs 46.7 with 2000). It is a buffer of the task, so
checkpoints carry it, and it is reproducible from ``task.seed``.

Legend: B images, T = 9 tiles, C channels, P tile side, D feature dims, N permutations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import rearrange

from convssl.errors import ConfigError
from convssl.losses.classification import cross_entropy_with_accuracy
from convssl.tasks.base import TaskBase
from convssl.views.crops import RandomResizedCrop
from convssl.views.grid import check_patch_fits, grid_geometry
from convssl.views.jigsaw_tiles import JigsawTiles
from convssl.views.normalize import normalize
from convssl.views.patch_shortcuts import normalize_per_patch


def hamming_permutations(count: int, items: int = 9, seed: int = 0) -> torch.Tensor:
    """``count`` permutations of ``items`` elements, ``[count, items]`` int64, chosen greedily.

    Noroozi & Favaro's Algorithm 1 starts from a random permutation and repeatedly adds
    the candidate with the largest *average* Hamming distance to those chosen. Here the
    candidate farthest from its *nearest* chosen permutation is added (ties broken by the
    largest total distance, i.e. their criterion; then the first in lexicographic order),
    so that the set's minimum distance, which decides how separable the classes are, is
    as large as greedy selection makes it and is at least ``guaranteed_min_distance``.
    """
    if not 1 <= count <= math.factorial(items):
        raise ConfigError(f"task.permutations must be 1..{math.factorial(items)} for {items} tiles, not {count}")
    candidates_TM = all_permutations(items).T.contiguous()  # one row per position: fast compares
    generator = torch.Generator().manual_seed(seed)
    nearest = torch.full((candidates_TM.shape[1],), items + 1, dtype=torch.int16)
    total = torch.zeros(candidates_TM.shape[1], dtype=torch.int32)
    index = int(torch.randint(0, candidates_TM.shape[1], (1,), generator=generator))
    chosen = []
    for _ in range(count):
        chosen.append(index)
        distance = torch.full_like(total, items)
        for position, value in enumerate(candidates_TM[:, index].tolist()):
            distance -= (candidates_TM[position] == value).to(torch.int16)
        nearest = torch.minimum(nearest, distance)
        total += distance
        index = int(torch.argmax(nearest.int() * (count * items + 1) + total))
    return candidates_TM[:, chosen].T.long()


def all_permutations(items: int) -> torch.Tensor:
    """All ``items!`` permutations in lexicographic order, ``[items!, items]`` int8 (as
    ``itertools.permutations``, built by blocks: each first element, then the permutations
    of the rest)."""
    perms = torch.zeros((1, 0), dtype=torch.int8)
    for m in range(1, items + 1):
        blocks = []
        for first in range(m):
            rest = torch.tensor([v for v in range(m) if v != first], dtype=torch.int8)
            blocks.append(torch.cat([torch.full((len(perms), 1), first, dtype=torch.int8), rest[perms.long()]], 1))
        perms = torch.cat(blocks)
    return perms


def guaranteed_min_distance(count: int, items: int = 9) -> int:
    """A lower bound on the minimum Hamming distance of ``hamming_permutations``: the
    largest d with ``(count - 1) * |ball of radius d - 1| < items!``, since while the
    chosen permutations' balls do not cover all permutations a candidate at distance
    >= d is left (the Gilbert-Varshamov argument). The ball counts permutations within
    distance r: sum over k <= r of C(items, k) * derangements(k)."""
    derangements = [1, 0]
    for k in range(2, items + 1):
        derangements.append((k - 1) * (derangements[-1] + derangements[-2]))

    def ball(radius: int) -> int:
        return sum(math.comb(items, k) * derangements[k] for k in range(radius + 1))

    d = 1
    while d + 1 <= items and (count - 1) * ball(d) < math.factorial(items):
        d += 1
    return d


class Jigsaw(TaskBase):
    """Predict which permutation of the set shuffled the 9 tiles."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """Tile layout as fractions of the grid cell (``convssl.views.grid``); permutations:
        the set's size; seed: draws the set; grayscale_p: whole-image grayscale; tile_norm:
        each tile by its own mean and std (the paper, sec. 3.3); tile_dim: the shared
        per-tile fc6; hidden: fc7."""

        tile: float = 64 / 75           # Noroozi & Favaro: 64 px tiles in 75 px cells of a 225 crop
        gap: float = 0.0
        jitter: float = 11 / 75         # the rest of the cell: random tile position
        permutations: int = 100
        seed: int = 0
        grayscale_p: float = 0.0
        tile_norm: bool = True
        tile_dim: int = 512
        hidden: int = 4096

    def __init__(self, encoder, cfg: Jigsaw.Config, data):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.data = data
        self.geometry = grid_geometry(data.size, cfg.tile, cfg.gap, cfg.jitter, what="tile")
        check_patch_fits(self.geometry, encoder.reductions[-1], "tile", cfg.tile)
        self.register_buffer("permutations", hamming_permutations(cfg.permutations, 9, cfg.seed))
        self.fc6 = nn.Sequential(nn.Linear(encoder.feature_dim, cfg.tile_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Linear(9 * cfg.tile_dim, cfg.hidden, bias=False), nn.BatchNorm1d(cfg.hidden), nn.ReLU(inplace=True),
            nn.Linear(cfg.hidden, cfg.permutations),
        )

    def loader_transform(self):
        d = self.data
        return JigsawTiles(RandomResizedCrop(d.size, d.scale, d.ratio, flip=d.flip), self.geometry,
                           self.permutations.cpu(), self.cfg.grayscale_p)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        tiles = batch["tiles"]
        B = tiles.shape[0]
        x_NCPP = rearrange(tiles, "b t c h w -> (b t) c h w")
        x_NCPP = normalize_per_patch(x_NCPP) if self.cfg.tile_norm else normalize(x_NCPP, self.data.mean, self.data.std)
        z_ND = self.fc6(self.encoder.pool(x_NCPP))
        logits = self.head(rearrange(z_ND, "(b t) d -> b (t d)", b=B))
        y_B = batch["label"].to(logits.device)
        return cross_entropy_with_accuracy(logits, y_B)
