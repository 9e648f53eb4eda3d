"""VICReg: variance, invariance and covariance regularization of two views' embeddings.

Bardes et al. 2022, "VICReg", eq. (1)-(6) and the official code (facebookresearch/vicreg):
- invariance ``s = mean squared error(z1, z2)``;
- variance ``v(z) = mean_j relu(1 - sqrt(Var(z_j) + eps))`` (unbiased variance, eps 1e-4),
  averaged over the two branches;
- covariance ``c(z) = sum_{i != j} Cov(z)_ij^2 / D`` (unbiased), summed over the branches;
- ``L = lambda s + mu v + nu c`` with lambda = mu = 25, nu = 1 (sec. 4.1).

Across ranks the variance and covariance are those of the GLOBAL batch (the official code
gathers the embeddings of all ranks, ``FullGatherLayer``, with gradients); the invariance
term is per sample, so each rank takes its own batch's mean and DDP's averaging makes it
the global one.

Legend: B per-rank batch, N global batch, D embedding dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convssl import dist
from convssl.losses.barlow_twins import off_diagonal

VARIANCE_EPS = 1e-4


def variance_term(z_ND: torch.Tensor, eps: float = VARIANCE_EPS) -> torch.Tensor:
    """Hinge on the standard deviation of each dimension, eq. (1)-(2) with gamma = 1."""
    return F.relu(1 - torch.sqrt(z_ND.var(dim=0) + eps)).mean()


def covariance_term(z_ND: torch.Tensor) -> torch.Tensor:
    """Sum of the squared off-diagonal covariances over D, eq. (3)-(4)."""
    centred = z_ND - z_ND.mean(dim=0)
    cov = centred.T @ centred / (z_ND.shape[0] - 1)
    return off_diagonal(cov).pow(2).sum() / z_ND.shape[1]


def vicreg_loss(z1_BD: torch.Tensor, z2_BD: torch.Tensor, *, invariance: float = 25.0,
                variance: float = 25.0, covariance: float = 1.0) -> torch.Tensor:
    """Eq. (6): the invariance on this rank's pairs; variance and covariance on the
    global batch (gathered with gradients). Computed in float32."""
    z1, z2 = z1_BD.float(), z2_BD.float()
    s = F.mse_loss(z1, z2)
    g1, g2 = dist.all_gather_with_grad(z1), dist.all_gather_with_grad(z2)
    v = (variance_term(g1) + variance_term(g2)) / 2
    c = covariance_term(g1) + covariance_term(g2)
    return invariance * s + variance * v + covariance * c
