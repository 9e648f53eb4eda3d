"""Build a bare ``nn.Module`` from an encoder spec string.

Specs:
- ``torchvision:NAME``   any torchvision classification model (``resnet18``, ``convnext_tiny``...)
- ``timm:NAME``          any timm model, when timm is installed
- ``package.module:callable``  a user's function or class returning an ``nn.Module``

Weights are always random: convssl pretrains from scratch.
"""

from __future__ import annotations

import importlib
import inspect

import torch.nn as nn

from convssl.errors import EncoderError


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"source:name"``; a dotted module path before the colon is a user callable."""
    if ":" not in spec:
        raise EncoderError(
            f"encoder spec {spec!r} has no source: write 'torchvision:{spec}', 'timm:{spec}' "
            "or 'package.module:callable'"
        )
    source, name = spec.split(":", 1)
    if not source or not name:
        raise EncoderError(f"encoder spec {spec!r} is incomplete: expected 'source:name'")
    return source, name


def build_model(spec: str, in_chans: int = 3, **kwargs) -> tuple[nn.Module, bool]:
    """Return ``(model, took_in_chans)``: ``took_in_chans`` says whether the builder itself
    made the first layer take ``in_chans`` (timm and user callables with that argument)."""
    source, name = parse_spec(spec)
    if source == "torchvision":
        return _torchvision_model(name, **kwargs), False
    if source == "timm":
        return _timm_model(name, in_chans, **kwargs), True
    return _user_model(source, name, in_chans, **kwargs)


def _torchvision_model(name: str, **kwargs) -> nn.Module:
    import torchvision.models as tvm

    known = set(tvm.list_models(module=tvm))
    if name not in known:
        close = sorted(n for n in known if name.split("_")[0] in n)[:8]
        raise EncoderError(
            f"torchvision has no classification model {name!r}"
            + (f"; similar names: {', '.join(close)}" if close else "")
            + ". List them with: python -c \"import torchvision; print(torchvision.models.list_models())\""
        )
    return tvm.get_model(name, weights=None, **kwargs)


def _timm_model(name: str, in_chans: int, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise EncoderError(
            f"encoder 'timm:{name}' needs timm: pip install 'convssl[timm]'"
        ) from exc
    if not timm.is_model(name):
        raise EncoderError(f"timm has no model {name!r}; see timm.list_models('*{name[:6]}*')")
    return timm.create_model(name, pretrained=False, in_chans=in_chans, **kwargs)


def _user_model(module_path: str, attr: str, in_chans: int, **kwargs) -> tuple[nn.Module, bool]:
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise EncoderError(
            f"cannot import {module_path!r} for encoder '{module_path}:{attr}' ({exc}); "
            "is the package installed or on PYTHONPATH?"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise EncoderError(f"module {module_path!r} has no attribute {attr!r}")
    if isinstance(factory, nn.Module):
        return factory, False
    if not callable(factory):
        raise EncoderError(f"'{module_path}:{attr}' is neither an nn.Module nor a callable")
    takes_in_chans = _accepts(factory, "in_chans")
    model = factory(in_chans=in_chans, **kwargs) if takes_in_chans else factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise EncoderError(
            f"'{module_path}:{attr}' returned {type(model).__name__}, not an nn.Module"
        )
    return model, takes_in_chans


def _accepts(fn, arg: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return arg in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
