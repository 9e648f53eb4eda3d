"""The photometric part of a contrastive view recipe, as a typed config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ColorAugConfig:
    """Strengths and probabilities of the photometric view augmentations.

    Defaults are MoCo v2's (``ColorJitter(0.4, 0.4, 0.4, 0.1)`` p 0.8, grayscale p 0.2,
    blur off: turn it on with ``blur_p: 0.5`` for 224 px). SimCLR's ImageNet recipe is
    strength s=1: (0.8, 0.8, 0.8, 0.2), blur p 0.5; its CIFAR recipe s=0.5, no blur.

    jitter_p: probability of applying colour jitter to a sample.
    brightness, contrast, saturation: factor drawn from [max(0, 1 - v), 1 + v].
    hue: shift drawn from [-hue, hue] (hue and saturation do nothing on 1-channel images).
    grayscale_p: probability of converting a 3-channel sample to gray (no-op for 1 channel).
    blur_p: probability of a Gaussian blur; sigma drawn from ``blur_sigma``.
    blur_kernel_frac: kernel side as a fraction of the image side (SimCLR: 10%), made odd.
    solarize_p: probability of inverting pixels at or above ``solarize_threshold`` (0..1 scale).
    """

    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self):
        for name in ("jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")


def blur_kernel_size(image_side: int, frac: float) -> int:
    """Odd kernel side, about ``frac`` of the image side, at least 3 (23 at 224 px, 3 at 32 px)."""
    k = max(3, int(round(frac * image_side)))
    return k if k % 2 == 1 else k + 1
