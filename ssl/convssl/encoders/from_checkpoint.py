"""The encoder of a checkpoint, rebuilt under the trust rules: nothing the file names runs
unless the caller names it too (``encoder_config``)."""

from __future__ import annotations

from pathlib import Path

from convssl.checkpoint.files import load, require_finite
from convssl.errors import ConvsslError

# Sources whose builders take a model name and plain numbers: rebuilding one runs no code
# named by the file. A ``package.module:callable`` spec imports and calls what it names.
BUILTIN_SOURCES = ("torchvision", "timm")
# Builder arguments that make torchvision or timm fetch or read weights: never from a file.
_LOADING_KWARGS = ("weights", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


def encoder_config(ckpt: dict, trust: tuple[str, ...] | list[str] = ()):
    """The checkpoint's ``EncoderConfig``, refused (``ConvsslError``, nothing imported or run)
    when rebuilding it would run code the file names.

    A checkpoint is data, read with ``weights_only=True``; but its recipe names the encoder
    builder, and a ``package.module:callable`` spec (say ``subprocess:getoutput`` with
    ``kwargs: {cmd: ...}``) would be imported and called. Such a spec is rebuilt only when it
    is in ``trust``: the user names it (``--trust-encoder SPEC``), as they would to pretrain it.
    torchvision and timm specs are rebuilt, minus builder arguments that load weights.
    """
    from convssl.config import from_dict
    from convssl.encoders import EncoderConfig
    from convssl.encoders.sources import parse_spec

    raw = ckpt["config"]["encoder"]
    spec = raw.get("spec") if isinstance(raw, dict) else None
    if not isinstance(spec, str):
        raise ConvsslError(f"checkpoint {ckpt.get('path')!r} names no encoder spec (config.encoder.spec)")
    source = parse_spec(spec)[0]
    if source not in BUILTIN_SOURCES and spec not in trust:
        raise ConvsslError(
            f"checkpoint {ckpt.get('path')!r} names the encoder {spec!r}: user code that rebuilding it would import "
            f"and call, so nothing was run. If you wrote this checkpoint or trust its source, pass "
            f"--trust-encoder {spec} (Python: trust=[{spec!r}])")
    loading = sorted(k for k in (raw.get("kwargs") or {}) if k in _LOADING_KWARGS)
    if source in BUILTIN_SOURCES and loading and spec not in trust:
        raise ConvsslError(
            f"checkpoint {ckpt.get('path')!r} gives the encoder {spec!r} the argument(s) {', '.join(loading)}, which "
            f"load weights from elsewhere; refused (nothing was loaded). If you trust it, pass --trust-encoder {spec}")
    return from_dict(EncoderConfig, raw, path="encoder")


def load_encoder(path: str | Path, trust: tuple[str, ...] | list[str] = ()):
    """Rebuild the pretrained Encoder of a checkpoint (dense, in eval-ready form).

    Returns ``(encoder, ckpt)``; ``ckpt["config"]`` has the data section (size, channels,
    mean, std) an evaluation needs. ``trust``: the user-code encoder specs the caller names
    (see ``encoder_config``); any other ``package.module:callable`` spec is refused.
    """
    from convssl.encoders import build_encoder

    ckpt = load(path)
    require_finite(ckpt["encoder"], ckpt["path"], "its run had diverged by then; use an earlier checkpoint of it")
    enc_cfg = encoder_config(ckpt, trust)
    encoder = build_encoder(enc_cfg)
    missing, unexpected = encoder.model.load_state_dict(ckpt["encoder"], strict=False)
    if missing or unexpected:
        raise ConvsslError(
            f"checkpoint {ckpt['path']!r} does not fit encoder {enc_cfg.spec!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return encoder, ckpt
