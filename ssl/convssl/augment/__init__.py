"""Photometric view augmentation (colour jitter, grayscale, blur, solarize).

Two placements of the same recipe: ``photometric.color_augment`` on a whole batch on the
training device, with per-sample random parameters; ``worker.worker_transform`` per
sample in the loader workers (torchvision transforms v2). Crops and flips always happen
in the loader workers.
"""

from convssl.augment.config import ColorAugConfig
from convssl.augment.photometric import color_augment

__all__ = ["ColorAugConfig", "color_augment"]
