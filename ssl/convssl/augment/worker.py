"""The same photometric recipe per sample, for the loader workers (torchvision v2).

Input and output: a uint8 ``[C, H, W]`` tensor (one view), so the batch that reaches the
task is already augmented; the task then only normalizes (``augment_on: worker``).
"""

from __future__ import annotations

from convssl.augment.config import ColorAugConfig, blur_kernel_size


def worker_transform(cfg: ColorAugConfig, channels: int, size: int):
    """A ``torchvision.transforms.v2.Compose`` applying ``cfg`` to one uint8 view."""
    from torchvision.transforms import v2

    color = channels == 3
    steps = []
    if cfg.jitter_p > 0:
        jitter = v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast,
                                saturation=cfg.saturation if color else 0,
                                hue=cfg.hue if color else 0)
        steps.append(v2.RandomApply([jitter], p=cfg.jitter_p))
    if color and cfg.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(p=cfg.grayscale_p))
    if cfg.blur_p > 0:
        k = blur_kernel_size(size, cfg.blur_kernel_frac)
        steps.append(v2.RandomApply([v2.GaussianBlur(k, sigma=cfg.blur_sigma)], p=cfg.blur_p))
    if cfg.solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=round(cfg.solarize_threshold * 255), p=cfg.solarize_p))
    return v2.Compose(steps)
