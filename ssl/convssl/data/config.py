"""The ``data`` section of a recipe: what the loader feeds a task."""

from __future__ import annotations

from dataclasses import dataclass

from convssl.config import at_least, between


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Input pipeline settings (per-sample work done in loader workers).

    size: training input size after the crop (a multiple of the encoder's reduction for SparK).
    channels: 1 (grayscale) or 3 (RGB); images are converted on decode.
    scale, ratio: RandomResizedCrop area and aspect ranges.
    flip: random horizontal flip.
    mean, std: per-channel normalisation applied by the task (0-1 scale).
    batch_size: GLOBAL batch size (split over ranks).
    workers: loader worker processes per rank.
    shuffle_buffer: samples in the shuffle buffer of each worker.
    max_corrupt_fraction: stop with an error when more samples than this are unreadable.
    """

    size: int = 224
    channels: int = 3
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    batch_size: int = 256
    workers: int = 4
    shuffle_buffer: int = 2000
    max_corrupt_fraction: float = 0.01

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need {self.channels} values (one per channel), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        at_least("size", self.size, 1)
        at_least("batch_size (the global batch)", self.batch_size, 1)
        at_least("workers (0 = load in the main process)", self.workers, 0)
        at_least("shuffle_buffer (0 = no shuffling)", self.shuffle_buffer, 0)
        between("max_corrupt_fraction", self.max_corrupt_fraction, 0, 1)
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        for i, s in enumerate(self.std):
            at_least(f"std[{i}]", s, 0, strict=True)
