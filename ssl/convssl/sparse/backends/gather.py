"""``gather`` backend: block-sparse convolution on the visible patches only.

SparK's mask is patch-aligned, so at every scale the visible set is a union of square
blocks (one per visible patch). Each visible block's input tile, with the halo the window
needs, is gathered into a dense batch of tiles, the ordinary (oneDNN / cuDNN) convolution
or pooling runs on it without padding, and the results are scattered back into a zero map
(the idea of SBNet, Ren et al., "SBNet: Sparse Blocks Network for Fast Inference",
CVPR 2018). Masked inputs are 0 (every layer zeroes them), and padding is read as 0 (or
-inf for max pooling), so each visible output is exactly what the dense layer computes
there: the same function as ``masked`` at visible positions.

Legend: B batch, C channels, gh/gw patch grid, bi/bo block size of the input/output map,
T tile size (the input a block of bo outputs reads), N visible blocks.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from convssl.sparse import layers as L


def _geometry(layer, hw_in, hw_out, grid):
    """Per axis (bi, bo, T, pad_before, pad_after), or None if the blocks do not line up."""
    k, s, p = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size), _pair(layer.padding)
    d = _pair(getattr(layer, "dilation", 1))
    out = []
    for i in range(2):
        if hw_in[i] % grid[i] or hw_out[i] % grid[i]:
            return None
        bi, bo = hw_in[i] // grid[i], hw_out[i] // grid[i]
        if s[i] * bo != bi:
            return None
        t = s[i] * (bo - 1) + d[i] * (k[i] - 1) + 1
        out.append((bi, bo, t, p[i], (grid[i] - 1) * bi + t - p[i] - hw_in[i]))
    return out


def _visible_blocks(ctx):
    """(b, gy, gx) of the visible patches, once per forward."""
    return ctx.sites(tuple(ctx.mask_B1hw.shape[-2:]))  # the patch grid's visible blocks


def _tiled(op, fill: float):
    def kernel(layer, x_BChw, mask_in_B1hw, mask_out_B1hw, ctx):
        grid = tuple(ctx.mask_B1hw.shape[-2:])
        geo = _geometry(layer, x_BChw.shape[-2:], mask_out_B1hw.shape[-2:], grid)
        if geo is None:  # not block-aligned at this size: the reference computation
            y = layer.dense_forward(x_BChw)
            return y * mask_out_B1hw.to(y.dtype)
        (bi_h, bo_h, t_h, pt, pb), (bi_w, bo_w, t_w, pl, pr) = geo
        b, gy, gx = _visible_blocks(ctx)
        x_pad = F.pad(x_BChw, (pl, pr, pt, pb), value=fill)
        tiles_BCghgwTT = x_pad.unfold(2, t_h, bi_h).unfold(3, t_w, bi_w)  # a view, no copy
        tiles_NCTT = tiles_BCghgwTT.permute(0, 2, 3, 1, 4, 5)[b, gy, gx]
        y_NCbb = op(layer, tiles_NCTT)
        B, (gh, gw), C = x_BChw.shape[0], grid, y_NCbb.shape[1]
        if L.is_channels_last(x_BChw):
            # the input's layout, so the next layer need not reorder: [B, gh, bo_h, gw, bo_w, C]
            out = y_NCbb.new_zeros(B, gh, bo_h, gw, bo_w, C)
            out.permute(0, 1, 3, 5, 2, 4).index_put_((b, gy, gx), y_NCbb)
            return out.view(B, gh * bo_h, gw * bo_w, C).permute(0, 3, 1, 2)
        out = y_NCbb.new_zeros(B, C, gh, bo_h, gw, bo_w)
        out.permute(0, 2, 4, 1, 3, 5).index_put_((b, gy, gx), y_NCbb)
        return out.view(B, C, gh * bo_h, gw * bo_w)
    return kernel


def _conv(layer, t):
    return F.conv2d(t, layer.weight, layer.bias, layer.stride, 0, layer.dilation, layer.groups)


def _max_pool(layer, t):
    return F.max_pool2d(t, layer.kernel_size, layer.stride or layer.kernel_size, 0, layer.dilation)


def _avg_pool(layer, t):
    return F.avg_pool2d(t, layer.kernel_size, layer.stride or layer.kernel_size, 0)


IMPLEMENTS = {nn.Conv2d: _tiled(_conv, 0.0), nn.MaxPool2d: _tiled(_max_pool, float("-inf")),
              nn.AvgPool2d: _tiled(_avg_pool, 0.0)}


def unsupported(layer: nn.Module) -> str | None:
    if isinstance(layer.padding, str):
        return f"padding={layer.padding!r} (only integer padding is tiled)"
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        return f"padding_mode={layer.padding_mode!r} (only zero padding is tiled)"
    if getattr(layer, "ceil_mode", False):
        return "ceil_mode=True"
    if isinstance(layer, nn.MaxPool2d) and layer.return_indices:
        return "return_indices=True"
    if isinstance(layer, nn.AvgPool2d) and (not layer.count_include_pad or layer.divisor_override):
        return "count_include_pad=False or divisor_override (the border divisor differs on a tile)"
    return None
