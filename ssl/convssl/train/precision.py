"""The autocast dtype a ``precision`` setting means on a device (trainer and fine-tuning)."""

from __future__ import annotations

import torch


def autocast_dtype(precision: str, dev: torch.device) -> torch.dtype | None:
    """None (fp32, no autocast) for ``fp32`` and for ``auto`` off CUDA; ``auto`` on CUDA is
    bf16 where supported, else fp16; ``bf16``/``fp16`` as named."""
    if precision == "fp32" or (precision == "auto" and dev.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
