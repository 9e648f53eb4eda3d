"""Countermeasures against the low-level shortcuts of patch-based pretext tasks.

A network asked where a patch sits (context prediction, jigsaw) can answer from cues
that say nothing about objects. Doersch et al. 2015 (sec. 3) name them and the cures
implemented here, each switchable by the tasks' configs:

- chromatic aberration (lenses shift colours towards the image border): *colour
  dropping*, keep one random channel of a patch and replace the others with noise
  (``drop_colours``), or grayscale the whole image (mmselfsup's RelativeLoc: p 0.66;
  ``grayscale``);
- pixelation and sharpness differences: *random down-then-up sampling* of patches "to
  as little as 100 total pixels" (``down_up_sample``);
- absolute brightness and contrast of a patch: *per-patch normalisation*
  (``normalize_per_patch``; also Noroozi & Favaro 2016, sec. 3.3, per tile).

The first three run in the loader workers on uint8 patches, with the sample's own
``torch.Generator``; normalisation runs on the training device in the task.

Legend: N patches, C channels, P patch side, B batch.
"""

from __future__ import annotations

import math

import torch

from convssl.views.photometric import rgb_to_gray
from convssl.views.crops import resize

STD_FLOOR = 0.02  # on the 0-1 scale: a blank patch stays ~0 instead of amplifying noise


def grayscale(img_CHW: torch.Tensor) -> torch.Tensor:
    """uint8 luma (ITU-R 601) copied to every channel; one-channel images unchanged."""
    if img_CHW.shape[0] == 1:
        return img_CHW
    gray = rgb_to_gray(img_CHW.float().unsqueeze(0))[0]
    return gray.round().clamp(0, 255).to(torch.uint8).expand_as(img_CHW).contiguous()


def drop_colours(patches_NCPP: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """With probability ``p`` per patch keep one random channel and replace the others by
    that channel's mean plus Gaussian noise of std max(1, its std / 100) grey levels
    (Doersch et al.: noise "~1/100 the standard deviation of the remaining channel",
    floored at one level so uint8 rounding does not erase it)."""
    N, C = patches_NCPP.shape[:2]
    if C == 1 or p <= 0:
        return patches_NCPP
    out = patches_NCPP.clone()
    chosen = (torch.rand(N, generator=generator) < p).tolist()
    keep = torch.randint(0, C, (N,), generator=generator).tolist()
    for i in (i for i in range(N) if chosen[i]):
        kept = patches_NCPP[i, keep[i]].float()
        noise = torch.randn((C,) + kept.shape, generator=generator) * max(1.0, kept.std().item() / 100)
        filled = (kept.mean() + noise).round().clamp(0, 255).to(torch.uint8)
        filled[keep[i]] = patches_NCPP[i, keep[i]]
        out[i] = filled
    return out


def down_up_sample(patches_NCPP: torch.Tensor, p: float, min_side: float,
                   generator: torch.Generator) -> torch.Tensor:
    """With probability ``p`` per patch, resize it down to a random side in
    ``[ceil(min_side * P), P)`` and back up (bilinear, antialiased). Doersch et al. go down
    to 100 pixels of a 96 px patch: ``min_side`` ~0.1."""
    N, _, P, _ = patches_NCPP.shape
    if p <= 0:
        return patches_NCPP
    low = max(1, math.ceil(min_side * P))
    if low >= P:
        return patches_NCPP
    out = patches_NCPP.clone()
    chosen = (torch.rand(N, generator=generator) < p).tolist()
    sides = torch.randint(low, P, (N,), generator=generator).tolist()
    for i in (i for i in range(N) if chosen[i]):
        small = resize(patches_NCPP[i], (sides[i], sides[i]))
        out[i] = resize(small, (P, P))
    return out


def normalize_per_patch(x_BCHW: torch.Tensor) -> torch.Tensor:
    """Each patch and channel to zero mean, unit std (std floored at ``STD_FLOOR``), from
    uint8 or 0..1 input."""
    x = x_BCHW.float()
    if x_BCHW.dtype == torch.uint8:
        x = x / 255.0
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True).clamp_min(STD_FLOOR)
    return (x - mean) / std
