"""Export a checkpoint's backbone in the original model's key space, verified by loading.

The checkpoint already stores the backbone under the original model's keys (the Encoder
never renames parameters), so export is a copy plus a check: the weights must load
into the original architecture, built as the encoder was (``build_bare_model``: for the
default stem exactly ``torchvision.models.NAME()`` / ``timm.create_model(NAME)``), with
``strict=True`` on every key but the classifier head's, which convssl never trains.
A JSON sidecar says how to rebuild the model and feed it (input size, channels,
normalisation) and which recipe produced the weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch

from convssl.atomic import clean_stale_temps, write_atomic
from convssl.config import to_dict
from convssl.encoders import Encoder, EncoderConfig, build_bare_model
from convssl.encoders.from_checkpoint import encoder_config
from convssl.encoders.sources import build_model, parse_spec
from convssl.encoders.stem import conv_in_channels
from convssl.errors import ConvsslError
from convssl import checkpoint as ckpt_io
from convssl.checkpoint.versions import versions
from convssl.writable import ensure_writable_dir

SIDECAR_FORMAT = "convssl-export/1"
FORMATS = ("torchvision", "timm", "state_dict")


class ExportError(ConvsslError):
    """The export cannot be made, or the weights do not load into the original model."""

    def __init__(self, message: str, *, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)


def export_backbone(ckpt_path: str | Path, out_path: str | Path, fmt: str | None = "torchvision",
                    safetensors: bool = False, trust: tuple[str, ...] | list[str] = ()) -> dict:
    """Write the backbone of ``ckpt_path`` to ``out_path`` (``.pth``, or ``.safetensors``)
    and its sidecar to ``out_path + ".json"``; return the sidecar dict.

    ``fmt`` names the key space the file promises: ``torchvision`` and ``timm`` need an
    encoder of that source; ``state_dict`` accepts any (user models included); None
    picks the encoder's source (``state_dict`` for user models). If
    ``out_path`` is a folder, the file is ``backbone.pth`` / ``backbone.safetensors`` in it.
    Raises ``ExportError`` (nothing written) when the weights do not load. ``trust``: the
    user-code encoder specs the caller names (``convssl.encoders.from_checkpoint.encoder_config``).
    """
    if fmt is not None and fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    save_safetensors = _safetensors_saver() if safetensors else None
    out_path = Path(out_path)
    if out_path.is_dir():
        out_path = out_path / ("backbone.safetensors" if safetensors else "backbone.pth")
    ensure_writable_dir(out_path.parent, "--out")
    clean_stale_temps(out_path.parent)
    ckpt = ckpt_io.load(ckpt_path)
    enc_cfg = encoder_config(ckpt, trust)
    source = parse_spec(enc_cfg.spec)[0]
    if fmt is None:
        fmt = source if source in FORMATS else "state_dict"
    if fmt != "state_dict" and source != fmt:
        hint = f"--format {source}" if source in FORMATS else "--format state_dict"
        raise ExportError(f"--format {fmt} needs a '{fmt}:' encoder, but this checkpoint's encoder is "
                          f"{enc_cfg.spec!r}; use {hint} (state_dict works for any encoder)")

    weights = {k: v.detach().cpu().contiguous() for k, v in ckpt["encoder"].items()}
    bad = ckpt_io.non_finite(weights)
    if bad:
        raise ExportError(f"checkpoint {ckpt['path']!r} holds NaN or infinite weights in {len(bad)} tensor(s) "
                          f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); export an earlier checkpoint")
    check = verify_backbone(enc_cfg, weights)
    weights = {k: v for k, v in weights.items() if k not in check["head_keys"]}

    if save_safetensors:
        write_atomic(out_path, lambda tmp: save_safetensors(
            {k: v.clone() for k, v in weights.items()}, str(tmp), metadata={"format": "pt"}))
    else:
        write_atomic(out_path, lambda tmp: torch.save(weights, tmp))

    data = ckpt["config"].get("data", {})
    exported = versions()
    sidecar = {
        "format": SIDECAR_FORMAT,
        "weights": out_path.name,
        "weights_format": "safetensors" if safetensors else "pth",
        "key_format": fmt,
        "sha256": _sha256(out_path),
        "num_tensors": len(weights),
        "num_params": sum(v.numel() for k, v in weights.items() if v.is_floating_point() and "running_" not in k),
        "encoder": {"spec": enc_cfg.spec, "config": to_dict(enc_cfg)},
        "architecture": check["architecture"],
        "verified": {"strict_backbone_load": True, "into": check["architecture"]["builder"]},
        "not_exported": {"classifier head": check["head_keys"]},
        "stages": check["stages"],
        "input": {
            "size": data.get("size", enc_cfg.input_size),
            "channels": data.get("channels", enc_cfg.in_chans),
            "mean": data.get("mean"),
            "std": data.get("std"),
            "scale": "pixels / 255, then (x - mean) / std per channel",
        },
        "recipe": ckpt["config"],
        "checkpoint": {"path": ckpt["path"], "step": ckpt.get("step")},
        "init": ckpt.get("init"),  # the starting weights pretraining began from (source, sha256), or None
        "convssl_version": exported["convssl"],
        "exported_with": exported,
        "versions": ckpt.get("versions"),  # those that wrote the checkpoint
    }
    sidecar_path = Path(f"{out_path}.json")
    write_atomic(sidecar_path, json.dumps(sidecar, indent=2, default=str) + "\n")
    sidecar["paths"] = {"weights": str(out_path), "sidecar": str(sidecar_path)}
    return sidecar


def verify_backbone(enc_cfg: EncoderConfig, weights: dict[str, torch.Tensor]) -> dict:
    """Load ``weights`` into the original architecture, strict on all but the head's keys.

    Returns ``{"head_keys", "stages", "architecture"}``; raises ``ExportError`` listing the
    missing, unexpected and shape-mismatched keys otherwise.
    """
    model = build_bare_model(enc_cfg)
    # The Encoder (on a copy: it swaps the head for nn.Identity) knows the head and the stages.
    encoder = Encoder(copy.deepcopy(model), input_size=enc_cfg.input_size, in_chans=enc_cfg.in_chans,
                      stages=enc_cfg.stages, config=enc_cfg)
    expected = model.state_dict()
    head_keys = [k for k in expected if any(k == h or k.startswith(f"{h}.") for h in encoder.head)]
    backbone = [k for k in expected if k not in head_keys]
    missing = [k for k in backbone if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [f"{k}: exported {list(weights[k].shape)}, model {list(expected[k].shape)}"
                  for k in backbone if k in weights and weights[k].shape != expected[k].shape]
    builder = _builder(enc_cfg)
    if missing or unexpected or mismatched:
        raise ExportError(
            f"the checkpoint's backbone does not load into {builder}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} mismatched key(s)"
            + "".join(f"\n  {what}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                      for what, keys in (("missing", missing), ("unexpected", unexpected),
                                         ("mismatched", mismatched)) if keys),
            missing=missing, unexpected=unexpected, mismatched=mismatched)
    full = {**{k: expected[k] for k in head_keys}, **{k: weights[k] for k in backbone}}
    model.load_state_dict(full, strict=True)  # the final word: also checks what the lists cannot
    return {"head_keys": head_keys, "stages": encoder.describe(),
            "architecture": _architecture(enc_cfg, builder, expected)}


def _builder(enc_cfg: EncoderConfig) -> str:
    source, name = parse_spec(enc_cfg.spec)
    kwargs = "".join(f", {k}={v!r}" for k, v in enc_cfg.kwargs.items())
    if source == "torchvision":
        return f"torchvision.models.{name}(weights=None{kwargs})"
    if source == "timm":
        chans = f", in_chans={enc_cfg.in_chans}" if enc_cfg.in_chans != 3 else ""
        return f"timm.create_model({name!r}, pretrained=False{chans}{kwargs})"
    return f"{source}.{name}({kwargs.lstrip(', ')})"


def _architecture(enc_cfg: EncoderConfig, builder: str, expected: dict[str, torch.Tensor]) -> dict:
    """How to rebuild the model, and where convssl's stem surgery departs from the plain one."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        plain, _ = build_model(enc_cfg.spec, in_chans=enc_cfg.in_chans, **enc_cfg.kwargs)
    plain_sd = plain.state_dict()
    changed = {k: {"exported": list(v.shape), "plain": list(plain_sd[k].shape) if k in plain_sd else None}
               for k, v in expected.items() if k not in plain_sd or plain_sd[k].shape != v.shape}
    stem = []
    if enc_cfg.small_input:
        stem.append("small_input: conv1 is a 3x3 stride-1 padding-1 conv, maxpool is nn.Identity()")
    if enc_cfg.in_chans != conv_in_channels(plain):
        stem.append(f"the first conv takes in_chans={enc_cfg.in_chans} (plain model: {conv_in_channels(plain)})")
    rebuild = ("from convssl.encoders import EncoderConfig, build_bare_model; "
               "model = build_bare_model(EncoderConfig(**sidecar['encoder']['config'])); "
               "model.load_state_dict(weights, strict=False)  # only the head missing")
    plain_ok = not changed and not enc_cfg.small_input
    return {
        "builder": builder if plain_ok else f"{builder} with convssl's stem changes",
        "loads_into_plain_model": plain_ok,
        "stem_changes": stem,
        "changed_from_plain": changed,
        "load_example": (f"model = {builder}; model.load_state_dict(weights, strict=False)  # only the head missing"
                         if plain_ok else rebuild),
    }


def _safetensors_saver():
    try:
        from safetensors.torch import save_file
    except ImportError as exc:
        raise ExportError("--safetensors needs the safetensors package: pip install 'convssl[safetensors]' "
                          "(or pip install safetensors); or export a .pth without --safetensors") from exc
    return save_file




def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
