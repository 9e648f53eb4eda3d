"""Cross-entropy with its accuracy: the loss of every classification pretext task
(rotation, context prediction, jigsaw)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_with_accuracy(logits_NK: torch.Tensor, y_N: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"loss": mean cross-entropy (in float32), "acc": top-1 accuracy (detached)}``."""
    loss = F.cross_entropy(logits_NK.float(), y_N)
    acc = (logits_NK.argmax(1) == y_N).float().mean()
    return {"loss": loss, "acc": acc.detach()}
