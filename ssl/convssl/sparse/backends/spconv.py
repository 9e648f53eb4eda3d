"""``spconv`` backend: true sparse convolution on the visible positions (spconv 2.x).

Stride 1: submanifold convolution (Graham et al., "3D Semantic Segmentation with
Submanifold Sparse Convolutional Networks", CVPR 2018): outputs at the visible input sites
only. Strided: spconv's sparse convolution, whose active set grows (any output whose
window touches a visible input), filtered back to the downsampled patch mask, since SparK
keeps the active set equal to the mask at every scale. Weights stay torch's dense
``[out, in, kh, kw]`` parameters (same names, so a checkpoint does not depend on the
backend) and are laid out for spconv on every call (differentiable).

Pitfalls of spconv 2.3.8 on CPU, each handled here and tested in tests/test_sparse_backends.py:
- indices must be a contiguous int32 [N, 3] (batch, y, x) tensor: ``nonzero()`` is
  column-major and spconv reads raw memory, silently computing garbage (``site_indices``);
- with more than one torch thread its CPU kernels race: a batch of 8 64-channel 32x32
  maps came out wrong by 0.3-0.5 relative on every try with 2 threads, right to 1e-6 with
  one; every spconv call runs with one thread (``one_thread``);
- its CPU backward calls ``torch.cuda.current_stream()`` (fails without an NVIDIA driver):
  the backward is ours, from spconv's rulebook (``_SparseConv``);
- the weight layout is ``[out, kh, kw, in]`` (``weight.permute(0, 2, 3, 1)``), except for
  1x1 stride-1 convolutions, which spconv runs as ``features @ weight.view(in, out)``: their
  weight must be laid out as ``[in, out]`` in memory (``spconv_weight``).
Depthwise/grouped convolutions and pooling are not run by spconv (pooling over active
sites only would drop the zeros of masked neighbours the reference reads): they fall back
to ``masked`` per layer.

Legend: N visible sites of the input map, M active sites of spconv's output.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules.utils import _pair

import spconv.pytorch as spconv_torch  # ImportError here -> the install hint of load_backend
from spconv.core import ConvAlgo
from spconv.cppconstants import CPU_ONLY_BUILD

from convssl.sparse.layers import is_channels_last


def site_indices(mask_B1hw: torch.Tensor) -> torch.Tensor:
    """Visible sites as spconv wants them: contiguous int32 [N, 3] (batch, y, x), row-major."""
    return mask_B1hw[:, 0].nonzero().int().contiguous()


def spconv_weight(layer: nn.Conv2d, w: torch.Tensor) -> torch.Tensor:
    """A dense ``[out, in, kh, kw]`` weight in the memory layout spconv reads for ``layer``
    (see the module docstring)."""
    if _is_pointwise(layer):
        out_c, in_c = w.shape[:2]
        return w.reshape(out_c, in_c).t().contiguous().view(out_c, 1, 1, in_c)
    return w.permute(0, 2, 3, 1).contiguous()


def _is_pointwise(layer: nn.Conv2d) -> bool:
    return _pair(layer.kernel_size) == (1, 1) and _pair(layer.stride) == (1, 1)


class one_thread:
    """``torch.set_num_threads(1)`` for a block, restored after (also on errors)."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        if self.threads != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.threads != 1:
            torch.set_num_threads(self.threads)


KEY = "convssl"  # spconv's indice_key: the rulebook (pairs) comes back with the output


def _spconv_op(layer: nn.Conv2d):
    """The spconv module describing ``layer``'s geometry (its own weight is never used)."""
    op = layer.__dict__.get("_spconv_op")
    if op is None:
        kw = dict(kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                  dilation=layer.dilation, bias=False, indice_key=KEY,
                  # the rulebook as (input, output) pairs per kernel offset, which our backward
                  # reads: the CUDA builds' default (implicit GEMM) keeps another structure,
                  # without indice_pairs (the CPU build's default is left as tested)
                  algo=None if CPU_ONLY_BUILD else ConvAlgo.Native)
        cls = spconv_torch.SubMConv2d if _pair(layer.stride) == (1, 1) else spconv_torch.SparseConv2d
        op = cls(layer.in_channels, layer.out_channels, **kw)
        layer.__dict__["_spconv_op"] = op
    return op


class _SparseConv(torch.autograd.Function):
    """spconv's forward (one thread) and a backward of our own from spconv's rulebook.

    spconv 2.3.8's CPU backward calls ``torch.cuda.current_stream()`` and fails on any
    machine without an NVIDIA driver, so the gradients are computed here from the
    (input row, output row) pairs of each kernel offset k:
    ``d_in[in] += d_out[out] @ W_k`` and ``dW_k = d_out[out]^T @ x[in]``.
    """

    @staticmethod
    def forward(ctx, feats_NC, weight_OIkk, bias_O, layer, idx_in, hw_in, batch, out_sites, hw_out):
        op, subm = _spconv_op(layer), _pair(layer.stride) == (1, 1)
        with one_thread():
            t = spconv_torch.SparseConvTensor(feats_NC, idx_in, list(hw_in), batch)
            y = op._conv_forward(False, t, spconv_weight(layer, weight_OIkk), None)
        kv = weight_OIkk.shape[2] * weight_OIkk.shape[3]
        if subm and kv == 1:
            pairs = None  # spconv's 1x1 path: a plain matmul, no rulebook
        else:
            pair = y.indice_dict[KEY]
            pairs = _offset_pairs(pair.indice_pairs, pair.indice_pair_num, kv, subm, feats_NC.shape[0])
        if subm:
            rows, y_RC = None, y.features  # same sites, same order as the input
        else:  # spconv's grown active set, filtered back to the mask (rows in out_sites order)
            (ho, wo), (ob, oy, ox) = hw_out, out_sites
            lin = (y.indices[:, 0].long() * ho + y.indices[:, 1].long()) * wo + y.indices[:, 2].long()
            lut = torch.full((batch * ho * wo,), -1, dtype=torch.long, device=lin.device)
            lut[lin] = torch.arange(lin.numel(), device=lin.device)
            rows = lut[(ob * ho + oy) * wo + ox]
            y_RC = y.features[rows]
        if bias_O is not None:
            y_RC = y_RC + bias_O
        ctx.save_for_backward(feats_NC, weight_OIkk)
        ctx.pairs, ctx.rows, ctx.num_out, ctx.has_bias = pairs, rows, y.features.shape[0], bias_O is not None
        return y_RC

    @staticmethod
    def backward(ctx, grad_RC):
        feats_NC, weight_OIkk = ctx.saved_tensors
        O, I, kh, kw = weight_OIkk.shape
        g_MC = grad_RC
        if ctx.rows is not None:
            g_MC = grad_RC.new_zeros(ctx.num_out, O).index_copy_(0, ctx.rows, grad_RC)
        w_kOI = weight_OIkk.permute(2, 3, 0, 1).reshape(kh * kw, O, I)
        if ctx.pairs is None:
            d_in, d_w = g_MC @ w_kOI[0], (g_MC.t() @ feats_NC).view(O, I, 1, 1)
        else:
            d_in = torch.zeros_like(feats_NC)
            d_w_kOI = torch.zeros_like(w_kOI)
            for k, (rows_in, rows_out) in enumerate(ctx.pairs):
                if rows_in is None:
                    continue
                g = g_MC.index_select(0, rows_out)
                d_in.index_add_(0, rows_in, g @ w_kOI[k])
                d_w_kOI[k] = g.t() @ feats_NC.index_select(0, rows_in)
            d_w = d_w_kOI.view(kh, kw, O, I).permute(2, 3, 0, 1)
        d_b = grad_RC.sum(0) if ctx.has_bias else None
        return d_in, d_w, d_b, None, None, None, None, None, None


def _offset_pairs(indice_pairs, indice_pair_num, kv, subm, n):
    """[(input rows, output rows) or (None, None)] per kernel offset (row-major ky, kx).

    Submanifold rulebooks store the centre implicitly (every site to itself) and the
    counts of the second half mirrored, as spconv's own CPU loop reads them."""
    nums = indice_pair_num.cpu().tolist()
    centre = kv // 2
    out = []
    for k in range(kv):
        if subm and k == centre:
            rows = torch.arange(n, device=indice_pairs.device)
            out.append((rows, rows))
            continue
        nhot = nums[kv - k - 1] if subm and k > centre else nums[k]
        if nhot <= 0:
            out.append((None, None))
            continue
        # copies: spconv may reuse the rulebook's memory in its next call, before this backward
        out.append((indice_pairs[0, k, :nhot].to(torch.long, copy=True), indice_pairs[1, k, :nhot].to(torch.long, copy=True)))
    return out


def _check_device(x: torch.Tensor) -> None:
    if x.device.type != "cpu" and CPU_ONLY_BUILD:
        raise RuntimeError(f"the installed spconv is a CPU-only build and cannot run on {x.device}; "
                           "install the spconv-cuXXX wheel matching your CUDA (e.g. spconv-cu126)")


def _conv(layer, x_BChw, mask_in_B1hw, mask_out_B1hw, ctx):
    _check_device(x_BChw)
    B, C, h, w = x_BChw.shape
    hw_out = tuple(mask_out_B1hw.shape[-2:])
    idx_in = ctx.memo(("spconv_sites", (h, w)), lambda: site_indices(mask_in_B1hw))
    out_sites = ctx.sites(hw_out)
    feats_NC = x_BChw.permute(0, 2, 3, 1)[mask_in_B1hw[:, 0]]  # row-major, as site_indices
    y_RC = _SparseConv.apply(feats_NC, layer.weight, layer.bias, layer, idx_in, (h, w), B, out_sites, hw_out)
    layout = torch.channels_last if is_channels_last(x_BChw) else torch.contiguous_format  # as the input's
    out = torch.empty(B, layer.out_channels, *hw_out, dtype=x_BChw.dtype, device=x_BChw.device,
                      memory_format=layout).zero_()
    out.permute(0, 2, 3, 1).index_put_(out_sites, y_RC)
    return out


IMPLEMENTS = {nn.Conv2d: _conv}


def unsupported(layer: nn.Module) -> str | None:
    if layer.groups != 1:
        return f"groups={layer.groups} (spconv has no grouped/depthwise convolution)"
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        return "only integer zero padding"
    if _pair(layer.stride) == (1, 1):
        k, p, d = _pair(layer.kernel_size), _pair(layer.padding), _pair(layer.dilation)
        if any(ki % 2 == 0 or pi != di * (ki - 1) // 2 for ki, pi, di in zip(k, p, d)):
            return "a stride-1 conv whose output is not centred on its input (submanifold needs odd, 'same' padding)"
    return None
