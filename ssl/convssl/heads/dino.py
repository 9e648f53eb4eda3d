"""DINO's projection head: an MLP to a bottleneck, L2 normalization, then K prototypes.

Caron et al. 2021, sec. 3.1 and appendix: "a 3-layer multi-layer perceptron (MLP) with hidden
dimension 2048 followed by l2 normalization and a weight normalized fully connected layer
with K dimensions"; GELU activations, bottleneck 256, no BatchNorm (``use_bn_in_head``
False in the public code), the weight norm's gain fixed to 1 (``norm_last_layer``). With
the gain fixed, the last layer is a cosine similarity to K learned prototype directions:
written here as such (normalized rows), without ``weight_norm``'s parametrization.

Legend: B batch, F input features, E bottleneck dim, K prototypes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DINOHead(nn.Module):
    """``[B, F] -> [B, K]``: MLP (``layers`` linear layers, GELU) -> normalize -> prototypes."""

    def __init__(self, in_dim: int, out_dim: int = 65536, *, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, layers: int = 3, batch_norm: bool = False):
        super().__init__()
        if layers < 1:
            raise ValueError(f"DINOHead needs at least 1 layer, got {layers}")
        mlp: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            mlp.append(nn.Linear(dim, hidden_dim))
            if batch_norm:
                mlp.append(nn.BatchNorm1d(hidden_dim))
            mlp.append(nn.GELU())
            dim = hidden_dim
        mlp.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*mlp)
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # DINO's init: truncated normal std 0.02, zero bias
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x_BF: torch.Tensor) -> torch.Tensor:
        e_BE = F.normalize(self.mlp(x_BF), dim=-1)
        return F.linear(e_BE, F.normalize(self.prototypes, dim=-1))
