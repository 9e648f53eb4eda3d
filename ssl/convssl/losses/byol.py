"""BYOL's regression loss: the mean squared error between L2-normalized vectors.

Grill et al. 2020, "Bootstrap Your Own Latent", eq. (2): ``L = ||q_bar - z_bar'||^2
= 2 - 2 cos(q, z')`` per sample, averaged over the batch; the target ``z'`` carries no
gradient (stop-gradient). Eq. (3) symmetrizes: ``L_BYOL = L + L~`` (each view predicts the
other's target). With several views (multi-crop), every view predicts the target of every
global view other than itself, and the loss is twice the mean over those pairs, which for
two views is exactly ``L + L~``.

No cross-rank term: each sample's loss involves only its own views, so the mean over ranks
of the per-rank losses is the loss of the global batch.

Legend: B batch, D projection dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalized_mse(p_BD: torch.Tensor, z_BD: torch.Tensor) -> torch.Tensor:
    """``mean_b ||p_b/|p_b| - z_b/|z_b|||^2 = mean_b (2 - 2 cos(p_b, z_b))``; ``z`` is detached.
    Computed in float32 whatever the autocast dtype."""
    return (2 - 2 * F.cosine_similarity(p_BD.float(), z_BD.detach().float(), dim=-1)).mean()


def byol_loss(predictions: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Twice the mean of ``normalized_mse(predictions[j], targets[i])`` over the pairs
    ``i != j``, for every target ``i`` (the global views) and prediction ``j`` (all views).
    Two views: ``L + L~`` of eq. (3)."""
    pairs = [(i, j) for i in range(len(targets)) for j in range(len(predictions)) if i != j]
    if not pairs:
        raise ValueError("byol_loss needs two views at least: each view predicts another view's target")
    return 2 * sum(normalized_mse(predictions[j], targets[i]) for i, j in pairs) / len(pairs)
