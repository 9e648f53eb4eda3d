"""Sparse versions of the layers a convnet is made of (SparK's ``masked`` backend).

Each sparse layer is an instance of a class defined here (``SparseConv2d(SparseWindowed,
nn.Conv2d)``, ..., ``SparseElementwise`` for activations) made from the dense instance by
``sparsify``: the very same parameter and buffer objects under the same attribute names, so
``state_dict`` keys never change; the dense instance itself is never changed and keeps
running dense (see ``convert.sparse_view``). The dense computation is always the dense
instance's own ``forward`` (``dense_forward``), so a subclass of a known layer (timm's
``Conv2dSame``, a ``LayerNorm2d``) computes what it computes densely, under the sparse class
of its known base. All layers of one encoder share one ``MaskContext`` (``self.sparse_ctx``);
with no mask set they compute exactly what the dense layer computes.

Semantics (SparK, Tian et al. 2023, sec. 3.1 and its public code): convolution and
pooling run densely and their outputs are multiplied by the mask at their own scale;
normalisation statistics and global pooling cover visible positions only; masked
positions are exactly 0 after every layer.

Legend: B batch, C channels, h/w map size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.ops.misc import SqueezeExcitation

from convssl.errors import EncoderError
from convssl.sparse.mask import MaskContext
from convssl.sparse.norm import masked_max, masked_mean, sparse_batch_norm, sparse_group_norm


class SparseLayer:
    """Mixin: the context, the layer's path (for errors), the layout of its tensors, and the
    dense layer it was made from (its class, and its bound ``forward``: the dense computation)."""

    sparse_ctx: MaskContext
    sparse_name: str = ""
    sparse_channels_last: bool = False
    sparse_dense_cls: type
    sparse_dense_forward = None

    def dense_forward(self, x):
        """What the dense layer computes on ``x`` (its own ``forward``, no hooks)."""
        return self.sparse_dense_forward(x)

    def _mask_output(self, y: torch.Tensor) -> torch.Tensor:
        return self.sparse_ctx.apply(y, self.sparse_channels_last, self._where)

    def _mask(self, x: torch.Tensor) -> torch.Tensor | None:
        hw = x.shape[1:3] if self.sparse_channels_last else x.shape[-2:]
        return self.sparse_ctx.at(hw, torch.bool, self._where)

    def _where(self) -> str:
        return f"{self.sparse_name or '?'} ({self.sparse_dense_cls.__name__})"


class MaskedOutput(SparseLayer):
    """Dense computation, then masked positions set to 0 (conv, pooling, per-position
    norms such as LayerNorm, Linear applied channels-last, activations with f(0) != 0)."""

    def forward(self, x):
        y = self.dense_forward(x)
        return self._mask_output(y) if self.sparse_ctx.active else y


class SparseWindowed(MaskedOutput):
    """Convolution and pooling: computed by the kernel of the layer's backend
    (``convssl.sparse.backends``), ``kernel(layer, x, mask_in, mask_out, ctx)``; the
    ``masked`` backend's kernel is ``MaskedOutput``'s dense-times-mask. ``sparse_backend``
    names the backend that provides ``sparse_kernel`` (set by ``backends.assign``)."""

    sparse_backend: str = "masked"
    sparse_kernel = None

    def forward(self, x):
        if not self.sparse_ctx.active or self.sparse_kernel is None:
            return MaskedOutput.forward(self, x)
        hw_in = x.shape[-2:]
        hw_out = output_size(self, hw_in)
        m_in = self.sparse_ctx.at(hw_in, torch.bool, self._where)
        m_out = self.sparse_ctx.at(hw_out, torch.bool, self._where)
        return self.sparse_kernel(self, x, m_in, m_out, self.sparse_ctx)


def is_channels_last(x_BChw: torch.Tensor) -> bool:
    """True for a channels-last map (a 1-channel map counts as channels-first: both layouts
    are contiguous there). Backends write their outputs in the layout of their input."""
    return x_BChw.shape[1] > 1 and x_BChw.is_contiguous(memory_format=torch.channels_last)


def output_size(layer: nn.Module, hw: tuple[int, int]) -> tuple[int, int]:
    """The map size a Conv2d / MaxPool2d / AvgPool2d with integer padding gives for ``hw``."""
    pair = nn.modules.utils._pair
    k, s, p = pair(layer.kernel_size), pair(layer.stride or layer.kernel_size), pair(layer.padding)
    d = pair(getattr(layer, "dilation", 1))
    ceil = getattr(layer, "ceil_mode", False)
    out = []
    for i in range(2):
        span = hw[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1
        out.append((-(-span // s[i]) if ceil else span // s[i]) + 1)
    return tuple(out)


class SparseBatchNorm(SparseLayer):
    """BatchNorm / SyncBatchNorm with statistics over visible positions (synchronised over
    ranks through ``dist.all_reduce`` when ``sparse_sync`` is set and training is
    distributed; ``nn.SyncBatchNorm`` itself does not run on CPU)."""

    sparse_sync: bool = False

    def forward(self, x):
        if not self.sparse_ctx.active:
            return self.dense_forward(x)
        m = self._mask(x)
        if m is None:
            return self.dense_forward(x)
        return sparse_batch_norm(self, x, m, sync=self.sparse_sync, sites=self.sparse_ctx.sites(x.shape[-2:]))


class SparseGroupNorm(SparseLayer):
    """GroupNorm with per-image statistics over visible positions."""

    def forward(self, x):
        m = self._mask(x) if self.sparse_ctx.active else None
        if m is None:
            return self.dense_forward(x)
        return sparse_group_norm(x, m, self.num_groups, self.weight, self.bias, self.eps)


class SparseInstanceNorm(SparseLayer):
    """InstanceNorm (no running statistics) over visible positions."""

    def forward(self, x):
        m = self._mask(x) if self.sparse_ctx.active else None
        if m is None:
            return self.dense_forward(x)
        return sparse_group_norm(x, m, x.shape[1], self.weight, self.bias, self.eps)


class SparseSqueezeExcitation(SparseLayer):
    """torchvision ``SqueezeExcitation`` (MobileNetV3, EfficientNet, RegNetY) whose squeeze
    averages visible positions only. Its children (fc1, fc2 on [B, C, 1, 1]) stay dense."""

    def forward(self, x):
        m = self._mask(x) if self.sparse_ctx.active else None
        if m is None:
            return self.dense_forward(x)
        scale = masked_mean(x, m)
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(scale))))
        return x * scale  # masked positions of x are 0, so they stay 0


class SparseGlobalAvgPool(SparseLayer):
    """``AdaptiveAvgPool2d(1)`` inside the network: the mean of visible positions."""

    def forward(self, x):
        m = self._mask(x) if self.sparse_ctx.active else None
        return self.dense_forward(x) if m is None else masked_mean(x, m)


class SparseGlobalMaxPool(SparseLayer):
    """``AdaptiveMaxPool2d(1)`` inside the network: the max of visible positions."""

    def forward(self, x):
        m = self._mask(x) if self.sparse_ctx.active else None
        return self.dense_forward(x) if m is None else masked_max(x, m)


# The sparse classes, one per known dense base (readable in ``print(model)``, picklable by
# name); ``sparse_class`` picks the one for a dense layer's class, subclasses included.
class SparseConv2d(SparseWindowed, nn.Conv2d):
    pass


class SparseMaxPool2d(SparseWindowed, nn.MaxPool2d):
    pass


class SparseAvgPool2d(SparseWindowed, nn.AvgPool2d):
    pass


class SparseBatchNorm2d(SparseBatchNorm, nn.BatchNorm2d):
    pass


class SparseSyncBatchNorm(SparseBatchNorm, nn.SyncBatchNorm):
    pass


class SparseGroupNorm2d(SparseGroupNorm, nn.GroupNorm):
    pass


class SparseInstanceNorm2d(SparseInstanceNorm, nn.InstanceNorm2d):
    pass


class SparseLayerNorm(MaskedOutput, nn.LayerNorm):
    """nn.LayerNorm on a channels-last map (torchvision ConvNeXt blocks), or a channels-first
    ``LayerNorm2d``: per position, so the dense result at visible positions is the sparse
    one; masked positions are reset to 0."""


class SparseLinear(MaskedOutput, nn.Linear):
    """nn.Linear on a channels-last map (ConvNeXt's pointwise MLP); its bias is undone at
    masked positions."""


class SparseElementwise(MaskedOutput, nn.Module):
    """An elementwise layer with f(0) != 0 (Sigmoid, a user's activation given as
    ``elementwise``): computed densely, masked positions reset to 0."""

    def extra_repr(self) -> str:
        return self.sparse_dense_cls.__name__


class SparseAdaptiveAvgPool2d(SparseGlobalAvgPool, nn.AdaptiveAvgPool2d):
    pass


class SparseAdaptiveMaxPool2d(SparseGlobalMaxPool, nn.AdaptiveMaxPool2d):
    pass


class SparseSqueezeExcitation2d(SparseSqueezeExcitation, SqueezeExcitation):
    pass


# mixin -> ((dense base, sparse class), ...): the first base the dense class derives from wins
_CLASSES: dict[type, tuple[tuple[type, type], ...]] = {
    SparseWindowed: ((nn.Conv2d, SparseConv2d), (nn.MaxPool2d, SparseMaxPool2d), (nn.AvgPool2d, SparseAvgPool2d)),
    SparseBatchNorm: ((nn.BatchNorm2d, SparseBatchNorm2d), (nn.SyncBatchNorm, SparseSyncBatchNorm)),
    SparseGroupNorm: ((nn.GroupNorm, SparseGroupNorm2d),),
    SparseInstanceNorm: ((nn.InstanceNorm2d, SparseInstanceNorm2d),),
    SparseGlobalAvgPool: ((nn.AdaptiveAvgPool2d, SparseAdaptiveAvgPool2d),),
    SparseGlobalMaxPool: ((nn.AdaptiveMaxPool2d, SparseAdaptiveMaxPool2d),),
    SparseSqueezeExcitation: ((SqueezeExcitation, SparseSqueezeExcitation2d),),
    MaskedOutput: ((nn.LayerNorm, SparseLayerNorm), (nn.Linear, SparseLinear), (nn.Module, SparseElementwise)),
}


def sparse_class(mixin: type, dense_cls: type) -> type:
    """The sparse class (defined above) for a dense layer class and its sparse behaviour."""
    for base, cls in _CLASSES.get(mixin, ()):
        if issubclass(dense_cls, base):
            return cls
    raise EncoderError(f"no sparse {mixin.__name__} layer for {dense_cls.__module__}.{dense_cls.__name__}")


def dense_class(layer: SparseLayer) -> type:
    """The class of the dense layer a sparse layer was made from."""
    return layer.sparse_dense_cls


def sparsify(module: nn.Module, mixin: type, ctx: MaskContext, name: str, *,
             channels_last: bool = False, **attrs) -> nn.Module:
    """A sparse instance for ``module`` sharing its parameters, buffers and children; its dense
    computation is ``module``'s own ``forward``."""
    cls = sparse_class(mixin, type(module))
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    new.sparse_ctx, new.sparse_name, new.sparse_channels_last = ctx, name, channels_last
    new.sparse_dense_cls, new.sparse_dense_forward = type(module), module.forward
    for k, v in attrs.items():
        setattr(new, k, v)
    return new
