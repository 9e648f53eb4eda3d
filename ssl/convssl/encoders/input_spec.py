"""What an encoder from a checkpoint is fed: input size, channels and normalisation.

They come from the checkpoint's recipe (its ``data`` section); a recipe without mean/std
gets torchvision's ImageNet statistics (their mean for one channel), as the probe does.
"""

from __future__ import annotations

from dataclasses import dataclass

from convssl.encoders import Encoder

# torchvision's ImageNet channel statistics; grayscale: their mean.
DEFAULT_NORM = {3: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), 1: ((0.449,), (0.226,))}


@dataclass(frozen=True)
class InputSpec:
    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def input_spec(ckpt: dict, encoder: Encoder) -> InputSpec:
    """The input a checkpoint's encoder was trained on."""
    data = ckpt["config"].get("data", {})
    channels = int(data.get("channels", encoder.in_chans))
    mean, std = data.get("mean"), data.get("std")
    if mean is None or std is None:
        mean, std = DEFAULT_NORM.get(channels, ((0.5,) * channels, (0.25,) * channels))
    return InputSpec(size=int(data.get("size", encoder.input_size)), channels=channels,
                     mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))
