"""A sparse twin of a convnet: the same parameters and names, the original left untouched.

The walk copies each container shallowly and puts ``layers.sparsify(...)`` of each known
layer in the copy (same parameters, same attribute name), shares elementwise layers, and
stops with an ``EncoderError`` naming the module path and type of any layer it cannot handle
(unknown layers with or without parameters, 3-D/1-D norms, resizing layers...), since a
layer computed densely on a masked map would silently mix masked positions in.

Layout: torchvision's ConvNeXt runs part of each block channels-last between two
``Permute`` modules inside an ``nn.Sequential``; the walk follows those to know which
layout each layer sees. ``nn.LayerNorm`` and ``nn.Linear`` act on the last dimension, so
on a 4-D map they only make sense channels-last, and are treated so outside a Sequential.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass

import torch.nn as nn
from torchvision.models.convnext import CNBlock
from torchvision.ops.misc import Permute, SqueezeExcitation
from torchvision.ops.stochastic_depth import StochasticDepth

from convssl.errors import EncoderError
from convssl.sparse import layers as L
from convssl.sparse.mask import MaskContext

# f(0) == 0 elementwise layers: masked positions stay 0 without any work.
ZERO_PRESERVING: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish,
    nn.ELU, nn.CELU, nn.SELU, nn.Tanh, nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.Softshrink,
    nn.Hardshrink, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity, StochasticDepth,
)
# Elementwise layers with f(0) != 0: computed densely, masked positions reset to 0.
REMASKED_ELEMENTWISE: tuple[type, ...] = (
    nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid, nn.Threshold, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
# Containers whose own parameters act per channel (zero-preserving): ConvNeXt's layer scale.
CONTAINERS_WITH_PARAMETERS: tuple[type, ...] = (CNBlock,)


def _channels_first_layernorm(module: nn.Module) -> bool:
    """torchvision's and timm's ``LayerNorm2d`` (subclasses of nn.LayerNorm that permute to
    normalise over channels of a [B, C, h, w] map; SparK's code mistook timm's for channels-last)."""
    return isinstance(module, nn.LayerNorm) and type(module).__name__ == "LayerNorm2d"


def resolve_types(paths: tuple[str, ...] | list[str]) -> tuple[type, ...]:
    """``package.module:Class`` strings (recipe-friendly) -> classes."""
    out = []
    for path in paths:
        module_path, _, attr = path.partition(":")
        try:
            cls = getattr(importlib.import_module(module_path), attr)
        except (ImportError, AttributeError) as exc:
            raise EncoderError(f"cannot import elementwise layer type {path!r}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise EncoderError(f"{path!r} is not an nn.Module class")
        out.append(cls)
    return tuple(out)


@dataclass
class SparseView:
    """A sparse twin of a model, built by ``sparse_view``.

    model: the twin's root. Its containers are shallow copies of the original's (own
        ``_modules``, shared ``_parameters`` and ``_buffers`` dicts); its known layers are
        sparse instances made from the originals (``layers.sparsify``); every other leaf is
        the original module itself. So every ``Parameter`` and buffer is the original's
        object, also after ``.to(device)``, and the original model is never changed.
    layers: {module path: (original layer, its sparse twin)} of every converted layer.
    twins: (twin, original) of every module the twin owns (copied containers and sparse
        layers); their ``training`` flags follow the originals through ``follow_modes``.
    """

    model: nn.Module
    layers: dict[str, tuple[nn.Module, nn.Module]]
    twins: list[tuple[nn.Module, nn.Module]]

    def follow_modes(self) -> None:
        """Copy ``train()``/``eval()`` of the originals onto the twins (cheap: one flag each)."""
        for twin, original in self.twins:
            twin.training = original.training

    def stale_layer(self, model: nn.Module) -> str | None:
        """The path of a layer of ``model`` that is no longer the one the twin was made from."""
        for path, (original, _) in self.layers.items():
            if model.get_submodule(path) is not original:
                return path
        return None


def sparse_view(model: nn.Module, ctx: MaskContext, *, sync_bn: bool = True,
                elementwise: tuple[type, ...] = ()) -> SparseView:
    """A sparse twin of ``model`` bound to ``ctx``; ``model`` itself is left untouched.

    sync_bn: BatchNorm statistics summed over ranks when training is distributed (SparK
        uses SyncBatchNorm); local statistics otherwise.
    elementwise: extra layer types known to act on each position alone (e.g. a custom
        activation); they are computed densely and masked positions reset to 0.
    """
    _reject_own_tensors(model, "<model>")
    view = SparseView(model=None, layers={}, twins=[])
    view.model = _twin(model, "", None, ctx, sync_bn, tuple(elementwise), view)
    return view


def _shallow_twin(module: nn.Module) -> nn.Module:
    """A copy of a container sharing its parameter and buffer dicts, with its own children."""
    twin = copy.copy(module)
    twin._modules = type(module._modules)(module._modules)
    return twin


def _twin(parent, prefix, layout, ctx, sync_bn, elementwise, view: SparseView) -> nn.Module:
    """layout: None unknown (channels-first assumed for convs), False channels-first, True last."""
    twin = _shallow_twin(parent)
    view.twins.append((twin, parent))
    in_sequence = isinstance(parent, nn.Sequential)
    for name, child in list(parent.named_children()):
        path = f"{prefix}.{name}" if prefix else name
        here = layout if in_sequence else None
        if isinstance(child, Permute):
            if in_sequence and list(child.dims) in ([0, 2, 3, 1], [0, 3, 1, 2]):
                layout = list(child.dims) == [0, 2, 3, 1]
                continue
            raise EncoderError(f"cannot make {path} ({type(child).__name__}, dims {child.dims}) sparse: "
                               "only NCHW<->NHWC permutes inside an nn.Sequential are understood")
        new = _sparse_version(child, path, here, ctx, sync_bn, elementwise)
        if new is not None:
            twin._modules[name] = new
            view.layers[path] = (child, new)
            view.twins.append((new, child))
        elif _passes_through(child, elementwise):
            continue
        elif any(True for _ in child.children()):
            _reject_own_tensors(child, path)
            twin._modules[name] = _twin(child, path, here if isinstance(child, nn.Sequential) else None,
                                        ctx, sync_bn, elementwise, view)
        else:
            raise _unknown(child, path)
    return twin


# Zero-preserving layers of optional libraries, known by class name (timm is not imported):
# timm's DropPath scales whole samples by 0 or 1/keep, so masked positions stay 0.
ZERO_PRESERVING_NAMES = {("timm.layers.drop", "DropPath"), ("timm.models.layers.drop", "DropPath")}


def _passes_through(module: nn.Module, elementwise) -> bool:
    if isinstance(module, elementwise):
        return False
    named = (type(module).__module__, type(module).__name__) in ZERO_PRESERVING_NAMES
    return named or isinstance(module, ZERO_PRESERVING)


def _sparse_version(m: nn.Module, path: str, layout, ctx, sync_bn, elementwise) -> nn.Module | None:
    """The sparse replacement of a known layer; None for containers and pass-through layers."""
    def need_channels_first():
        if layout is True:
            raise EncoderError(f"{path} ({type(m).__name__}) runs on a channels-last map here; "
                               "cannot make it sparse")

    if isinstance(m, L.SparseLayer):
        raise EncoderError(f"{path} ({type(m).__name__}) is already sparse; convert a dense encoder")
    if isinstance(m, SqueezeExcitation):
        need_channels_first()
        return L.sparsify(m, L.SparseSqueezeExcitation, ctx, path)
    if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        need_channels_first()
        return L.sparsify(m, L.SparseWindowed, ctx, path)
    if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        need_channels_first()
        return L.sparsify(m, L.SparseBatchNorm, ctx, path, sparse_sync=sync_bn)
    if isinstance(m, nn.GroupNorm):
        need_channels_first()
        return L.sparsify(m, L.SparseGroupNorm, ctx, path)
    if isinstance(m, nn.InstanceNorm2d):
        need_channels_first()
        if m.track_running_stats:
            raise EncoderError(f"{path} (InstanceNorm2d with track_running_stats=True) has no sparse "
                               "version; use track_running_stats=False or GroupNorm")
        return L.sparsify(m, L.SparseInstanceNorm, ctx, path)
    if _channels_first_layernorm(m):
        need_channels_first()
        return L.sparsify(m, L.MaskedOutput, ctx, path)
    if isinstance(m, (nn.LayerNorm, nn.Linear)):
        if layout is False:
            raise EncoderError(f"{path} ({type(m).__name__}) acts on the last dimension of a "
                               "channels-first map here (mixing positions along the width); "
                               "cannot make it sparse")
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
            raise EncoderError(f"{path} (LayerNorm over {tuple(m.normalized_shape)}) normalises over "
                               "more than channels; cannot make it sparse")
        return L.sparsify(m, L.MaskedOutput, ctx, path, channels_last=True)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * 2
        if tuple(size) != (1, 1):
            raise EncoderError(f"{path} ({type(m).__name__}, output {m.output_size}) resizes a map "
                               "to a fixed size; only global (1x1) pooling has a sparse version")
        need_channels_first()
        mixin = L.SparseGlobalAvgPool if isinstance(m, nn.AdaptiveAvgPool2d) else L.SparseGlobalMaxPool
        return L.sparsify(m, mixin, ctx, path)
    if isinstance(m, REMASKED_ELEMENTWISE + elementwise):
        return L.sparsify(m, L.MaskedOutput, ctx, path, channels_last=bool(layout))
    return None


def _reject_own_tensors(module: nn.Module, path: str) -> None:
    """A container using its own parameters in its forward does something we cannot see."""
    if isinstance(module, CONTAINERS_WITH_PARAMETERS):
        return
    own = [n for n, p in module.named_parameters(recurse=False)]
    own += [n for n, b in module.named_buffers(recurse=False) if b is not None]
    if own:
        raise EncoderError(
            f"cannot make {path} ({type(module).__name__}) sparse: it uses its own tensors "
            f"({', '.join(own)}) in a forward convssl cannot see into. Supported: Conv2d, pooling, "
            "BatchNorm/SyncBatchNorm, GroupNorm, LayerNorm (channels-last and LayerNorm2d), "
            "torchvision SqueezeExcitation, elementwise layers"
        )


def _unknown(module: nn.Module, path: str) -> EncoderError:
    kind = "has parameters" if any(True for _ in module.parameters()) else "may mix positions"
    return EncoderError(
        f"cannot make {path} ({type(module).__module__}.{type(module).__name__}) sparse: an unknown "
        f"layer type that {kind}. If it acts on each position alone (an activation), pass it as "
        "elementwise (task.elementwise: ['package.module:Class']); otherwise it needs a sparse "
        "implementation in convssl.sparse.layers"
    )
