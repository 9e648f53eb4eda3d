"""``masked`` backend (the reference, SparK's own): the dense layer on the whole map, then
masked positions set to 0 (Tian et al., ICLR 2023, sec. 3.1 and its public code)."""

from __future__ import annotations

import torch.nn as nn

from convssl.sparse import layers as L


def dense_then_mask(layer, x_BChw, mask_in_B1hw, mask_out_B1hw, ctx):
    y = layer.dense_forward(x_BChw)
    return y * mask_out_B1hw.to(y.dtype)


IMPLEMENTS = {nn.Conv2d: dense_then_mask, nn.MaxPool2d: dense_then_mask, nn.AvgPool2d: dense_then_mask}


def unsupported(layer: nn.Module) -> str | None:
    return None
