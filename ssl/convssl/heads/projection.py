"""MLP projection head: the ``g(.)`` of SimCLR and MoCo v2.

SimCLR (Chen et al. 2020, sec. 2.1): "a MLP with one hidden layer ... z = W2 relu(W1 h)"
with BN in the official code (v2 uses 3 layers). MoCo v2 (Chen et al. 2020b): a 2-layer
MLP head (2048-d hidden, ReLU) without BN.

Legend: B batch, F input features, D output dim.
"""

from __future__ import annotations

import torch.nn as nn


def projection_head(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, *,
                    num_layers: int = 2, batch_norm: bool = True, last_bn: bool = False
                    ) -> nn.Sequential:
    """``num_layers`` linear layers; hidden ones are Linear-[BN]-ReLU, the last Linear[-BN].

    batch_norm: BN after each hidden linear (their bias is then redundant and dropped).
    last_bn: a non-affine BN on the output (SimCLR's TF code: BN without centering there).
    Input ``[B, F]`` -> output ``[B, D]``.
    """
    if num_layers < 1:
        raise ValueError(f"a projection head needs at least 1 layer, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
