"""Learning-rate and weight-decay schedules as pure functions of the step.

A pure function needs no state of its own in the checkpoint: the step is enough.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, peak: float, warmup: int, final: float) -> float:
    """Linear warm-up from ``peak/warmup`` to ``peak`` over ``warmup`` steps, then cosine
    to ``final`` at ``total`` (Goyal et al. 2017; Loshchilov & Hutter 2017)."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * progress))


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Cosine from ``start`` to ``end`` over ``total`` steps (SparK's weight decay)."""
    progress = min(1.0, step / max(1, total))
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))
