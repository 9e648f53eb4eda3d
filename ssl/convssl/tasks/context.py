"""Context prediction: relative patch location (Doersch, Gupta, Efros, ICCV 2015).

The loader's workers cut a random resized crop into a 3x3 grid of jittered patches with
a gap between them (``convssl.views.context_patches``) and keep the centre patch plus ``pairs`` of
its 8 neighbours, each labelled with its position: labels 0..7 are the neighbours in
reading order, skipping the centre::

    0 1 2
    3 . 4
    5 6 7

Late fusion as in the paper (sec. 3.1, "the two patches are processed by a shared
trunk ... and fused at fc6"): the shared encoder embeds every patch once, the pooled
centre feature is concatenated with each neighbour's, and an MLP (Linear-BN-ReLU-
Dropout-Linear, mmselfsup's RelativeLoc neck and head) predicts the 8-way label;
cross-entropy. Several pairs per image share one pass of the centre patch.

Defaults follow mmselfsup's published RelativeLoc setting (255 px crops, 85 px cells,
64 px patches, jitter up to 21 px, grayscale p 0.66, a 4096-wide neck with dropout
0.5); Doersch et al.'s gap, colour dropping and down-then-up sampling are switchable
(``convssl.views.patch_shortcuts``).

Legend: B images, K = pairs per image, C channels, P patch side, D feature dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import rearrange, repeat

from convssl.errors import ConfigError
from convssl.losses.classification import cross_entropy_with_accuracy
from convssl.tasks.base import TaskBase
from convssl.views.context_patches import ContextPatches
from convssl.views.crops import RandomResizedCrop
from convssl.views.grid import check_patch_fits, grid_geometry
from convssl.views.normalize import normalize
from convssl.views.patch_shortcuts import normalize_per_patch


class ContextPrediction(TaskBase):
    """Predict which of the 8 neighbours of the centre patch a second patch is."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """Patch layout as fractions of the grid cell (``convssl.views.grid``): patch side,
        minimum gap between adjacent patches, jitter range. pairs: neighbours per image (8 =
        all, as mmselfsup). grayscale_p (whole image), color_drop_p and downsample_p (per
        patch) are the shortcut countermeasures; patch_norm normalises each patch by its own
        mean and std instead of the data set's. hidden/dropout: the fusion MLP."""

        patch: float = 64 / 85          # mmselfsup: 64 px patches in 85 px cells
        gap: float = 0.0
        jitter: float = 21 / 85         # mmselfsup: jitter up to 21 px
        pairs: int = 8
        grayscale_p: float = 0.66       # mmselfsup RandomGrayscale
        color_drop_p: float = 0.0       # Doersch et al.: colour dropping
        downsample_p: float = 0.0       # Doersch et al.: 0.33
        downsample_min: float = 0.1     # down to ~100 pixels of a 96 px patch
        patch_norm: bool = True
        hidden: int = 4096
        dropout: float = 0.5

    def __init__(self, encoder, cfg: ContextPrediction.Config, data):
        super().__init__()
        if not 1 <= cfg.pairs <= 8:
            raise ConfigError(f"task.pairs must be 1..8 (neighbours of the centre patch), not {cfg.pairs}")
        self.encoder = encoder
        self.cfg = cfg
        self.data = data
        self.geometry = grid_geometry(data.size, cfg.patch, cfg.gap, cfg.jitter, what="patch")
        check_patch_fits(self.geometry, encoder.reductions[-1], "patch", cfg.patch)
        self.head = nn.Sequential(
            nn.Linear(2 * encoder.feature_dim, cfg.hidden, bias=False), nn.BatchNorm1d(cfg.hidden),
            nn.ReLU(inplace=True), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, 8),
        )

    def loader_transform(self):
        d = self.data
        c = self.cfg
        return ContextPatches(RandomResizedCrop(d.size, d.scale, d.ratio, flip=d.flip), self.geometry,
                              pairs=c.pairs, grayscale_p=c.grayscale_p, color_drop_p=c.color_drop_p,
                              downsample_p=c.downsample_p, downsample_min=c.downsample_min)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        patches = batch["patches"]
        B, n = patches.shape[:2]
        x_NCPP = rearrange(patches, "b n c h w -> (b n) c h w")
        x_NCPP = normalize_per_patch(x_NCPP) if self.cfg.patch_norm else normalize(x_NCPP, self.data.mean, self.data.std)
        z_BnD = rearrange(self.encoder.pool(x_NCPP), "(b n) d -> b n d", b=B)
        centre_BKD = repeat(z_BnD[:, 0], "b d -> b k d", k=n - 1)
        pairs_MD = rearrange(torch.cat([centre_BKD, z_BnD[:, 1:]], dim=-1), "b k d -> (b k) d")
        y_M = batch["label"].reshape(-1).to(pairs_MD.device)
        logits = self.head(pairs_MD)
        return cross_entropy_with_accuracy(logits, y_M)
