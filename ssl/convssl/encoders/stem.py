"""Stem surgery done when an encoder is built: input channels and the small-input stem.

Both keep every parameter name (``conv1.weight`` stays ``conv1.weight``), so weights
export back into a model built the same way.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from convssl.errors import EncoderError


def first_conv(model: nn.Module, probe: torch.Tensor) -> tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` to run on the input (found by a forward, not by order of
    registration, which need not be the order of execution)."""
    seen: list[tuple[str, nn.Conv2d]] = []
    names = {m: n for n, m in model.named_modules()}
    handles = [
        m.register_forward_pre_hook(lambda mod, _inp: seen.append((names[mod], mod)) if not seen else None)
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(probe)
    except Exception:
        pass  # the first conv ran before anything else can fail; only `seen` matters
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise EncoderError("the model has no nn.Conv2d that runs on the input; is it a convnet?")
    return seen[0]


def set_in_chans(model: nn.Module, in_chans: int, probe_size: int = 64) -> None:
    """Make the first convolution take ``in_chans`` channels (same name, new weight)."""
    name, conv = first_conv(model, torch.zeros(1, conv_in_channels(model), probe_size, probe_size))
    if conv.in_channels == in_chans:
        return
    if conv.groups != 1:
        raise EncoderError(f"first convolution {name!r} is grouped; cannot change its input channels")
    replace_submodule(model, name, _like(conv, in_channels=in_chans))


def conv_in_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise EncoderError("the model has no nn.Conv2d; is it a convnet?")


def small_input_stem(model: nn.Module) -> None:
    """ResNet-family stem for 28-64 px inputs: 3x3 stride-1 ``conv1``, no max-pool.

    As in the CIFAR ResNets of He et al. (2016, sec. 4.2) and every CIFAR SSL benchmark
    (SimCLR appendix B.9): the 7x7/2 conv and the 3x3/2 pool would shrink a 32 px image to
    8 px before the first block.
    """
    conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if not isinstance(conv, nn.Conv2d) or pool is None:
        raise EncoderError(
            f"small_input applies to ResNet-family models (a 'conv1' Conv2d and a 'maxpool'); "
            f"{type(model).__name__} has no such stem. Use a model made for small images, "
            "or give a larger input size."
        )
    model.conv1 = _like(conv, kernel_size=3, stride=1, padding=1)
    model.maxpool = nn.Identity()


def _like(conv: nn.Conv2d, **changes) -> nn.Conv2d:
    args = dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    args.update(changes)
    return nn.Conv2d(**args)


def replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the dotted ``name`` is, keeping the name (and so the keys)."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
