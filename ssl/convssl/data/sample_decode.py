"""One raw shard sample (its members' bytes) -> a uint8 ``[C, H, W]`` image and its class.

A sample that cannot be turned into an image (and class) raises ``CorruptSample``, which
the reader counts and replaces (``convssl.data.corrupt_samples``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pnm")


@dataclass(frozen=True)
class RawSample:
    shard: str
    key: str
    members: dict[str, bytes]


class CorruptSample(Exception):
    """A sample that cannot be turned into an image (and class); internal to the reader."""


class Decoded(NamedTuple):
    raw: RawSample
    img_CHW: torch.Tensor
    cls: int | None


def decode_sample(raw: RawSample, *, channels: int | None, labeled: bool) -> Decoded:
    """The sample's first image member (in ``IMAGE_EXTENSIONS`` order) as uint8 ``[C, H, W]``
    (``channels``: 1 -> "L", 3 -> "RGB", None keeps "L" and "RGB", else "RGB"), and its
    ``.cls`` as an int when ``labeled``."""
    ext = next((ext for ext in IMAGE_EXTENSIONS if ext in raw.members), None)
    if ext is None:
        raise CorruptSample(f"no image member (has: {', '.join(raw.members) or 'nothing'})")
    cls = None
    if labeled:
        try:
            cls = int(raw.members["cls"].decode("ascii").strip())
        except (KeyError, UnicodeDecodeError, ValueError):
            raise CorruptSample("missing or non-integer class (.cls)") from None
    try:
        with Image.open(io.BytesIO(raw.members[ext])) as img:
            img = img.convert(_target_mode(img.mode, channels))
            pixels_HWC = np.array(img).reshape(img.height, img.width, -1)
    except Exception as err:  # noqa: BLE001 - PIL's plugins raise many types on bad bytes
        raise CorruptSample(f"undecodable .{ext} image ({type(err).__name__}: {err})") from None
    return Decoded(raw, torch.from_numpy(pixels_HWC).permute(2, 0, 1), cls)


def _target_mode(mode: str, channels: int | None) -> str:
    if channels == 1:
        return "L"
    if channels == 3:
        return "RGB"
    return mode if mode in ("L", "RGB") else "RGB"
