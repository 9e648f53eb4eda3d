"""Barlow Twins: the cross-correlation of two views' embeddings driven to the identity.

Zbontar et al. 2021, "Barlow Twins", eq. (1) and Algorithm 1: each embedding dimension is
standardized over the batch (``BatchNorm1d(affine=False)``: biased variance, eps 1e-5),
``C = z1_norm^T z2_norm / N``, and ``L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2``
with lambda = 0.0051 (sec. 4, "Implementation details").

Across ranks C is the cross-correlation of the GLOBAL batch, as in the paper's code
(SyncBatchNorm, then ``all_reduce`` of ``z1^T z2``): the embeddings of all ranks are
gathered with gradients (``convssl.dist.all_gather_with_grad``) and every rank computes the
same global loss; after DDP averages the gradients, they equal one process's on the whole
batch.

Legend: B per-rank batch, N global batch, D embedding dim.
"""

from __future__ import annotations

import torch

from convssl import dist

BN_EPS = 1e-5  # BatchNorm1d's default, which the paper's code standardizes with


def standardize(z_ND: torch.Tensor, eps: float = BN_EPS) -> torch.Tensor:
    """Each column to mean 0, variance 1 over the batch (biased variance, as BatchNorm)."""
    centred = z_ND - z_ND.mean(dim=0)
    return centred / torch.sqrt(centred.pow(2).mean(dim=0) + eps)


def off_diagonal(m_DD: torch.Tensor) -> torch.Tensor:
    """The ``D*(D-1)`` off-diagonal entries of a square matrix, flattened."""
    d = m_DD.shape[0]
    return m_DD.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def cross_correlation(z1_ND: torch.Tensor, z2_ND: torch.Tensor) -> torch.Tensor:
    """``C = standardize(z1)^T standardize(z2) / N``, ``[D, D]``."""
    return standardize(z1_ND).T @ standardize(z2_ND) / z1_ND.shape[0]


def barlow_twins_loss(z1_BD: torch.Tensor, z2_BD: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """Eq. (1) on the global batch (gathered over ranks with gradients), in float32."""
    z1 = dist.all_gather_with_grad(z1_BD.float())
    z2 = dist.all_gather_with_grad(z2_BD.float())
    c = cross_correlation(z1, z2)
    return (torch.diagonal(c) - 1).pow(2).sum() + lambd * off_diagonal(c).pow(2).sum()
