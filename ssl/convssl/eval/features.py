"""Frozen features of every encoder stage, for probing.

Each stage map is average-pooled to a k x k grid with ``C * k * k <= max_dims``
(k = 1 is global average pooling). Pooling each stage to ~9k dims rather than to 1x1
follows the per-layer linear benchmarks of Goyal et al. (2019, "Scaling and
benchmarking self-supervised visual representation learning"): it keeps some spatial
layout for the early, narrow stages.

Legend: B batch, N samples, C channels, h/w a stage map's size, D feature dims.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from convssl.data.crops import ResizeCenterCrop
from convssl.data.views import Named
from convssl.data.normalize import normalize
from convssl.data.reader import ShardDataset, make_loader
from convssl.data.tar_stream import is_local, iter_shard, local_path
from convssl.data.urls import resolve_shards
from convssl.encoders import Encoder
from convssl.errors import DataError
from convssl.workers import loader_batches

MAX_DIMS = 9216  # as Goyal et al. 2019: each stage pooled to at most ~9k dims


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


@contextlib.contextmanager
def labeled_batches(spec: str, size: int, channels: int, batch_size: int,
                    workers: int) -> Iterator[Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """``with labeled_batches(...) as batches:`` ``(img_uint8_BCHW, cls_B)`` batches of a
    labeled shard set, in a fixed order; the loader's workers stop on leaving, error or not.

    Unshuffled, no augmentation, one pass: the evaluation view of the data. Shards
    without labels are refused here, in this process, before any worker starts.
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


@torch.no_grad()
def extract_features(encoder: Encoder, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                     mean, std, max_dims: int | None = MAX_DIMS) -> FeatureSet:
    """Pooled features of every stage for ``(img_uint8_BCHW, cls_B)`` batches.

    The encoder runs in eval mode (BatchNorm uses its running statistics), without
    gradients, on the device of its parameters; features are gathered on the CPU in
    float32. The encoder's train/eval mode is restored afterwards.
    """
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    grids: list[int] | None = None
    chunks: list[list[torch.Tensor]] = [[] for _ in encoder.stages]
    labels: list[torch.Tensor] = []
    try:
        for img_BCHW, cls_B in batches:
            x_BCHW = normalize(img_BCHW.to(device, non_blocking=True), mean, std)
            maps = encoder(x_BCHW)
            if grids is None:
                grids = [pool_grid(m.shape[1], m.shape[2], m.shape[3], max_dims) for m in maps]
            for out, map_BChw, k in zip(chunks, maps, grids):
                out.append(F.adaptive_avg_pool2d(map_BChw.float(), k).flatten(1).cpu())
            labels.append(cls_B.cpu())
    finally:
        encoder.train(was_training)
    if grids is None:
        raise DataError("the shard set held no samples to probe; check the --train/--val shards")
    stages = [
        StageFeatures(s.name, s.channels, s.reduction, k, torch.cat(out))
        for s, k, out in zip(encoder.stages, grids, chunks)
    ]
    return FeatureSet(stages, torch.cat(labels))


def features_of_shards(encoder: Encoder, spec: str, *, size: int, channels: int, mean, std,
                       batch_size: int = 256, workers: int = 2, max_dims: int | None = MAX_DIMS) -> FeatureSet:
    """``extract_features`` over a labeled shard set (folder, manifest or brace pattern)."""
    with labeled_batches(spec, size, channels, batch_size, workers) as batches:
        return extract_features(encoder, batches, mean=mean, std=std, max_dims=max_dims)
