"""Frozen features of every encoder stage, for probing.

Each stage map is average-pooled to a k x k grid with ``C * k * k <= max_dims``
(k = 1 is global average pooling). Pooling each stage to ~9k dims rather than to 1x1
follows the per-layer linear benchmarks of Goyal et al. (2019, "Scaling and
benchmarking self-supervised visual representation learning"): it keeps some spatial
layout for the early, narrow stages.

The pass runs in inference mode with the encoder in channels-last layout (twice the
img/s of NCHW for a small-input ResNet-18 on CPU, and what cuDNN prefers), and keeps
the pooled features in float16 (half the memory: 60k x 9216 dims is 1.1 GB per stage);
a stage whose values do not fit float16 stays float32. The probes upcast to float32.

With ``patch_grid`` n > 1 each image is instead cut into n x n patches that are encoded
separately, and each stage's pooled features are averaged over the patches: the probe
protocol of Kolesnikov, Zhai, Beyer (2019, "Revisiting self-supervised visual
representation learning", sec. 4) for encoders trained on patches (context prediction,
jigsaw), which then see inputs of the size they were trained on.

Legend: B batch, N samples, C channels, h/w a stage map's size, D feature dims, n patch grid.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from convssl.views.crops import ResizeCenterCrop
from convssl.views.crop_views import Named
from convssl.views.normalize import normalize
from convssl.data.loader import make_loader
from convssl.data.shard_dataset import ShardDataset
from convssl.data.tar_stream import is_local, iter_shard, local_path
from convssl.data.urls import resolve_shards
from convssl.encoders import Encoder
from convssl.errors import DataError, EncoderError
from convssl.eval.status_line import StatusLine, hms
from convssl.workers import loader_batches

MAX_DIMS = 9216  # as Goyal et al. 2019: each stage pooled to at most ~9k dims
_HALF_MAX = 65504.0  # largest finite float16


@dataclass
class StageFeatures:
    """One stage's features: its layout, the pooled grid side and the [N, D] features."""

    name: str
    channels: int
    reduction: int
    grid: int
    feats_ND: torch.Tensor

    @property
    def dims(self) -> int:
        return self.channels * self.grid * self.grid


@dataclass
class FeatureSet:
    """Per-stage features of one labeled data set, in reading order."""

    stages: list[StageFeatures]
    labels_N: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels_N)


def pool_grid(channels: int, h: int, w: int, max_dims: int | None = MAX_DIMS) -> int:
    """Largest pooled grid side k with ``channels * k * k <= max_dims`` and k <= h, w.

    ``max_dims`` None or 0 means global average pooling (k = 1).
    """
    if not max_dims:
        return 1
    k = math.isqrt(max(max_dims // channels, 1))
    return max(1, min(k, h, w))


def eval_resize(size: int) -> int:
    """Shorter side before the central crop: images up to 64 px (CIFAR, the MNIST family)
    are probed whole, as in CIFAR protocols; larger ones resized to size / 0.875 and
    centre-cropped, as in ImageNet protocols (256 -> 224)."""
    return size if size <= 64 else round(size / 0.875)


def cut_patch_grid(x_BCHW: torch.Tensor, n: int) -> torch.Tensor:
    """The central ``n * (H // n)`` square cut into n x n patches: ``[B * n * n, C, H // n, W // n]``,
    grouped by image."""
    side_h, side_w = x_BCHW.shape[-2] // n, x_BCHW.shape[-1] // n
    top, left = (x_BCHW.shape[-2] - n * side_h) // 2, (x_BCHW.shape[-1] - n * side_w) // 2
    x = x_BCHW[..., top:top + n * side_h, left:left + n * side_w]
    return rearrange(x, "b c (i h) (j w) -> (b i j) c h w", i=n, j=n)


def check_patch_grid(encoder: Encoder, size: int, patch_grid: int) -> None:
    """An ``EncoderError`` when ``size // patch_grid`` is below the encoder's minimum input."""
    if patch_grid < 1:
        raise EncoderError(f"--patch-grid must be at least 1, not {patch_grid}")
    if patch_grid == 1:
        return  # whole images: the encoder's own input checks apply
    minimum = encoder.reductions[-1]
    if size // patch_grid < minimum:
        raise EncoderError(
            f"--patch-grid {patch_grid} cuts {size} px images into {size // patch_grid} px patches, smaller than the "
            f"encoder's minimum input size {minimum} px (its total reduction); use --patch-grid <= {size // minimum} "
            f"or a larger --size"
        )


@contextlib.contextmanager
def labeled_batches(spec: str, size: int, channels: int, batch_size: int,
                    workers: int) -> Iterator[Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """``with labeled_batches(...) as batches:`` ``(img_uint8_BCHW, cls_B)`` batches of a
    labeled shard set, in a fixed order; the loader's workers stop on leaving, error or not.

    Unshuffled, no augmentation, one pass: the evaluation view of the data. Shards
    without labels are refused here, in this process, before any worker starts. This is
    the one place the evaluation reads shards.
    """
    urls, manifest = resolve_shards(spec)
    _check_labeled(spec, urls, manifest)
    dataset = ShardDataset(urls, transform=Named(ResizeCenterCrop(size, resize=eval_resize(size))), channels=channels,
                           labeled=True, shuffle_buffer=0, seed=0, infinite=False, manifest=manifest)
    with loader_batches(make_loader(dataset, batch_size, workers, persistent_workers=False)) as batches:
        yield ((batch["img"], batch["cls"]) for batch in batches)


def _check_labeled(spec: str, urls: list[str], manifest) -> None:
    """Refuse unlabeled shards: by their manifest, else by the first sample of a local shard."""
    if manifest is not None:
        labeled = manifest.labeled
    elif is_local(urls[0]) and Path(local_path(urls[0])).is_file():
        with contextlib.closing(iter_shard(urls[0])) as samples:
            first = next(samples, None)
        labeled = first is None or "cls" in first[1]
    else:
        return  # a remote shard set without a manifest: the reader counts unlabeled samples as corrupt
    if not labeled:
        raise DataError(f"{spec!r} holds no labels (.cls); probing needs labeled shards: "
                        "convssl shards SRC OUT --labeled")


def shard_count(spec: str) -> int | None:
    """Samples in a shard set (several joined by ``::`` too), when every part's manifest tells
    (for a progress ETA)."""
    total = 0
    for part in str(spec).split("::"):
        _, manifest = resolve_shards(part)
        if manifest is None:
            return None
        total += sum(s.count for s in manifest.shards)
    return total


@contextmanager
def _inference_layout(encoder: Encoder):
    """Eval mode and channels-last weights for the pass; both restored afterwards."""
    was_training = encoder.training
    was_channels_last = any(p.dim() == 4 and not p.is_contiguous() for p in encoder.parameters())
    encoder.eval()
    encoder.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if not was_channels_last:
            encoder.to(memory_format=torch.contiguous_format)
        encoder.train(was_training)


@torch.inference_mode()
def extract_features(encoder: Encoder, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                     mean, std, max_dims: int | None = MAX_DIMS, status: StatusLine | None = None,
                     label: str = "features", total: int | None = None, patch_grid: int = 1) -> FeatureSet:
    """Pooled features of every stage for ``(img_uint8_BCHW, cls_B)`` batches (with
    ``patch_grid`` > 1: averaged over each image's n x n patches).

    The encoder runs in eval mode (BatchNorm uses its running statistics), in inference
    mode, channels-last, on the device of its parameters; features are gathered on the
    CPU in float16 (float32 for a stage that overflows float16). The encoder's mode and
    memory layout are restored afterwards. ``status`` shows ``label``, images done (of
    ``total`` when given), img/s and ETA while it runs.
    """
    device = next(encoder.parameters()).device
    grids: list[int] | None = None
    chunks: list[list[torch.Tensor]] = [[] for _ in encoder.stages]
    labels: list[torch.Tensor] = []
    done, started = 0, time.perf_counter()
    with _inference_layout(encoder):
        for img_BCHW, cls_B in batches:
            x_BCHW = normalize(img_BCHW.to(device, non_blocking=True), mean, std)
            B = x_BCHW.shape[0]
            x_BCHW = cut_patch_grid(x_BCHW, patch_grid) if patch_grid > 1 else x_BCHW
            maps = encoder(x_BCHW.contiguous(memory_format=torch.channels_last))
            if grids is None:
                grids = [pool_grid(m.shape[1], m.shape[2], m.shape[3], max_dims) for m in maps]
            for out, map_BChw, k in zip(chunks, maps, grids):
                pooled = F.adaptive_avg_pool2d(map_BChw.float(), k).flatten(1)
                if patch_grid > 1:
                    pooled = rearrange(pooled, "(b p) d -> b p d", b=B).mean(1)
                out.append(_compact(pooled).cpu())
            labels.append(cls_B.cpu())
            done += len(cls_B)
            if status is not None:
                rate = done / max(time.perf_counter() - started, 1e-9)
                eta = f", ETA {hms((total - done) / rate)}" if total else ""
                status.show(f"{label}: {done}{f'/{total}' if total else ''} images, {rate:,.0f} img/s{eta}")
    if grids is None:
        raise DataError("the shard set held no samples to probe; check the --train/--val shards")
    stages = [
        StageFeatures(s.name, s.channels, s.reduction, k, _concat(out))
        for s, k, out in zip(encoder.stages, grids, chunks)
    ]
    return FeatureSet(stages, torch.cat(labels))


def _compact(feats_BD: torch.Tensor) -> torch.Tensor:
    """float16 when every value fits (relative error <= 2^-11), else float32."""
    if feats_BD.abs().max() < _HALF_MAX:
        return feats_BD.half()
    return feats_BD


def _concat(chunks: list[torch.Tensor]) -> torch.Tensor:
    if all(c.dtype == torch.float16 for c in chunks):
        return torch.cat(chunks)
    return torch.cat([c.float() for c in chunks])


def features_of_shards(encoder: Encoder, spec: str, *, size: int, channels: int, mean, std,
                       batch_size: int = 256, workers: int = 2, max_dims: int | None = MAX_DIMS,
                       status: StatusLine | None = None, label: str = "features",
                       patch_grid: int = 1) -> FeatureSet:
    """``extract_features`` over a labeled shard set (folder, manifest or brace pattern)."""
    check_patch_grid(encoder, size, patch_grid)
    with labeled_batches(spec, size, channels, batch_size, workers) as batches:
        return extract_features(encoder, batches, mean=mean, std=std, max_dims=max_dims, status=status,
                                label=label, total=shard_count(spec), patch_grid=patch_grid)
