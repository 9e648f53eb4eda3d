"""Build a bare ``nn.Module`` from an encoder spec string.

Specs:
- ``torchvision:NAME``   any torchvision classification model (``resnet18``, ``convnext_tiny``...)
- ``timm:NAME``          any timm model, when timm is installed
- ``package.module:callable``  a user's function or class returning an ``nn.Module``

Weights here are always random; starting weights (``encoder.init``) are loaded afterwards
by ``convssl.encoders.init_weights``, where a run starts.
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
    try:
        return tvm.get_model(name, weights=None, **kwargs)
    except (TypeError, ValueError) as exc:  # a wrong encoder.kwargs key or value
        raise EncoderError(f"encoder 'torchvision:{name}' with kwargs {kwargs}: "
                           f"{type(exc).__name__}: {_first_line(exc)}") from exc


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
    spec = f"{module_path}:{attr}"
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise EncoderError(
            f"cannot import {module_path!r} for encoder {spec!r} ({exc}); "
            "is the package installed or on PYTHONPATH?"
        ) from exc
    except Exception as exc:  # the user's module failed while importing
        raise EncoderError(f"importing {module_path!r} for encoder {spec!r} failed: "
                           f"{type(exc).__name__}: {_first_line(exc)}") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise EncoderError(f"module {module_path!r} has no attribute {attr!r}")
    if isinstance(factory, nn.Module):
        return factory, False
    if not callable(factory):
        raise EncoderError(f"'{module_path}:{attr}' is neither an nn.Module nor a callable")
    takes_in_chans = _names_parameter(factory, "in_chans")
    try:
        model = factory(in_chans=in_chans, **kwargs) if takes_in_chans else factory(**kwargs)
    except Exception as exc:  # the user's code: one line naming the spec, the cause chained
        args = ", ".join([*(["in_chans=" + str(in_chans)] if takes_in_chans else []),
                          *(f"{k}={v!r}" for k, v in kwargs.items())])
        raise EncoderError(f"encoder {spec!r}: {spec.replace(':', '.')}({args}) raised "
                           f"{type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise EncoderError(
            f"'{module_path}:{attr}' returned {type(model).__name__}, not an nn.Module"
        )
    return model, takes_in_chans


def _names_parameter(fn, arg: str) -> bool:
    """Whether ``fn``'s signature names ``arg``. A ``**kwargs`` catch-all does not count:
    such builders (torchvision's ``resnet18(**kwargs)``) pass it on to a class that may
    not take it, so convssl adapts the first convolution itself instead."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    param = params.get(arg)
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
