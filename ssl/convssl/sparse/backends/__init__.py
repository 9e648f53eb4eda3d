"""Sparse execution backends: one module per backend, one table from name to module.

A backend module provides ``IMPLEMENTS``, a table from dense layer class (``nn.Conv2d``,
``nn.MaxPool2d``, ``nn.AvgPool2d``) to its kernel ``kernel(layer, x_BChw, mask_in_B1hw,
mask_out_B1hw, ctx) -> y_BChw`` (masked positions of ``y`` exactly 0, the same function as
the ``masked`` reference at visible positions), and ``unsupported(layer) -> str | None``,
the reason it cannot run a layer of a class it implements (that layer then falls back to
``masked``, logged). Norms, activations and global pooling are the same in every backend
(``convssl.sparse.layers``). ``auto`` is not a module: it picks, per layer, the fastest
backend computing the same function (``convssl.sparse.backends.auto``).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import torch.nn as nn

from convssl.errors import ConfigError
from convssl.sparse import layers as L

log = logging.getLogger(__name__)

BACKENDS: dict[str, str] = {
    "masked": "convssl.sparse.backends.masked",
    "gather": "convssl.sparse.backends.gather",
    "spconv": "convssl.sparse.backends.spconv",
}
CHOICES: tuple[str, ...] = (*BACKENDS, "auto")

SPCONV_HINT = ("backend 'spconv' needs the spconv package: pip install 'convssl[spconv]' "
               "(CPU build; on a GPU install the matching spconv-cuXXX wheel, e.g. spconv-cu126)")


def load_backend(name: str) -> ModuleType:
    """The module of a backend; a clear error for unknown names and missing packages."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown sparse backend {name!r}; choose one of {', '.join(CHOICES)}")
    try:
        return importlib.import_module(BACKENDS[name])
    except ImportError as exc:
        if name == "spconv":
            raise ConfigError(f"{SPCONV_HINT} ({exc})") from exc
        raise


def check_backend(name: str) -> None:
    """Fail early (before any heavy work) for an unknown or unavailable backend."""
    if name == "auto":
        return
    load_backend(name)


def windowed_layers(view) -> dict[str, nn.Module]:
    """{path: sparse twin} of the convolution and pooling layers of a ``SparseView``."""
    return {path: twin for path, (_, twin) in view.layers.items() if isinstance(twin, L.SparseWindowed)}


def kernel_for(name: str, layer: nn.Module):
    """(kernel, reason): the backend's kernel for ``layer``, or (None, why not)."""
    module = load_backend(name)
    dense_cls = L.dense_class(layer)
    kernel = module.IMPLEMENTS.get(dense_cls)
    if kernel is None:
        return None, f"{name} has no {dense_cls.__name__}"
    reason = module.unsupported(layer)
    return (None, reason) if reason else (kernel, None)


def assign(view, choices: dict[str, str]) -> dict[str, str]:
    """Give each conv/pool layer of ``view`` the kernel of ``choices[path]``; layers a backend
    cannot run fall back to ``masked`` (logged). Returns {path: backend actually used}."""
    used = {}
    for path, layer in windowed_layers(view).items():
        name, kernel, reason = choices.get(path, "masked"), None, None
        if name != "masked":  # masked: the layer's own dense-times-mask path
            kernel, reason = kernel_for(name, layer)
        if name != "masked" and kernel is None:
            log.info("sparse backend %s: %s (%s) falls back to masked: %s", name, path,
                     L.dense_class(layer).__name__, reason)
            name, kernel = "masked", None
        layer.sparse_backend, layer.sparse_kernel = name, kernel
        used[path] = name
    return used
