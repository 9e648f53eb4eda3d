"""Baseline encoders to probe beside a pretrained one: ``random`` and ``weights:PATH``.

- ``random`` (or ``random:SEED``): the same architecture at random init, drawn after
  ``torch.manual_seed(SEED)`` (default 0) as ``convssl probe --encoder`` draws it, in a
  forked RNG so the caller's random stream does not move. The baseline every pretext
  task must beat (Doersch et al. 2015 and every probe since report it).
- ``weights:PATH``: a state dict under the original model's keys loaded, strictly, into
  the same architecture: a ``convssl export`` (``.pth``/``.pt`` or ``.safetensors``), a
  plain ``torch.save(model.state_dict())`` or a convssl checkpoint (its encoder). Keys of
  the original classifier head, which the encoder does not have, are dropped; any other
  missing or unexpected key, or a shape that differs, is an error naming the keys.

Specs are checked (``parse_baseline``) before any feature is computed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from convssl.encoders import Encoder, EncoderConfig, build_encoder
from convssl.errors import ConfigError, ConvsslError

SPEC_HELP = "random, random:SEED or weights:PATH (a .pth/.pt/.safetensors state dict or a convssl checkpoint)"


@dataclass(frozen=True)
class BaselineSpec:
    """A parsed ``--baseline`` value: ``kind`` "random" (with ``seed``) or "weights" (with ``path``)."""

    kind: str
    seed: int = 0
    path: str | None = None

    @property
    def text(self) -> str:
        return f"random:{self.seed}" if self.kind == "random" else f"weights:{self.path}"

    @property
    def label(self) -> str:
        """How tables and verdicts name it."""
        return "random init" if self.kind == "random" else f"weights {Path(self.path).name}"


@dataclass
class Baseline:
    """A baseline ready to probe: its spec, encoder and a description of its weights."""

    spec: BaselineSpec
    encoder: Encoder
    source: dict


def parse_baseline(text: str) -> BaselineSpec:
    """A ``BaselineSpec`` from ``random``, ``random:SEED`` or ``weights:PATH``; a ``ConfigError``
    naming the accepted forms otherwise, and when PATH is not a file."""
    kind, _, rest = text.partition(":")
    if kind == "random":
        if rest and not rest.lstrip("-").isdigit():
            raise ConfigError(f"--baseline {text!r}: the seed of random:SEED must be an integer")
        return BaselineSpec("random", seed=int(rest) if rest else 0)
    if kind == "weights":
        if not rest:
            raise ConfigError(f"--baseline {text!r}: give the file, weights:PATH")
        if not Path(rest).is_file():
            raise ConfigError(f"--baseline {text!r}: {rest!r} does not exist or is not a file")
        return BaselineSpec("weights", path=rest)
    raise ConfigError(f"--baseline {text!r}: use {SPEC_HELP}")


def random_init(config: EncoderConfig, seed: int) -> Encoder:
    """``config``'s architecture at random init after ``torch.manual_seed(seed)``, without
    moving the caller's RNG. Starting weights a config may name (``init``) are not loaded."""
    names = {f.name: f for f in dataclasses.fields(config)}
    if "init" in names:  # a random-init baseline never starts from the recipe's weights
        f = names["init"]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        config = dataclasses.replace(config, init=default)
    with torch.random.fork_rng(devices=[]):  # the CPU stream only: building draws there
        # torch.manual_seed would also reseed every GPU's stream, which fork_rng(devices=[])
        # does not restore: a monitored GPU run would then draw other masks than an unmonitored one
        torch.random.default_generator.manual_seed(seed)
        return build_encoder(config)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weight file: ``.safetensors``, or a ``torch.save``d state dict or
    convssl checkpoint (read with ``weights_only=True``: no code in the file runs)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ConvsslError(f"{str(path)!r} is a .safetensors file: pip install safetensors") from exc
        try:
            return load_file(str(path))
        except Exception as exc:
            raise ConvsslError(f"cannot read {str(path)!r} as safetensors ({type(exc).__name__}: {exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConvsslError(f"cannot read weights {str(path)!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                           "give a state dict (.pth/.pt/.safetensors) or a convssl checkpoint") from None
    if isinstance(obj, dict) and isinstance(obj.get("encoder"), dict) and "config" in obj:
        obj = obj["encoder"]  # a convssl checkpoint: its encoder, already under the original keys
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConvsslError(f"{str(path)!r} holds no state dict (a mapping of names to tensors)")
    return obj


def load_weights(config: EncoderConfig, path: str | Path, seed: int = 0) -> Encoder:
    """``config``'s architecture with the weights of ``path``, loaded strictly."""
    from convssl.encoders import build_bare_model

    encoder = random_init(config, seed)
    weights = read_state_dict(path)
    own = encoder.model.state_dict()
    unexpected = [k for k in weights if k not in own]
    if unexpected:  # the original classifier head (fc.*, classifier.*) is not part of the encoder
        with torch.random.fork_rng(devices=[]):
            head = set(build_bare_model(config).state_dict()) - set(own)
        weights = {k: v for k, v in weights.items() if k not in head}
        unexpected = [k for k in unexpected if k not in head]
    missing = [k for k in own if k not in weights]
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"missing {len(missing)} key(s): {', '.join(missing[:6])}" if missing else "",
                 f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:6])}" if unexpected else "",
                 f"other shapes (file vs encoder): {'; '.join(shapes[:4])}" if shapes else ""]
        raise ConvsslError(f"weights {str(path)!r} do not fit {config.spec!r}: "
                           + "; ".join(p for p in parts if p))
    encoder.model.load_state_dict(weights, strict=True)
    return encoder


def build_baseline(spec: BaselineSpec, config: EncoderConfig) -> Baseline:
    """The baseline encoder of ``spec`` in the architecture of ``config``."""
    if config is None:
        raise ConfigError("a baseline needs the probed encoder's architecture (an EncoderConfig); this encoder has none")
    if spec.kind == "random":
        return Baseline(spec, random_init(config, spec.seed), {"kind": "random", "seed": spec.seed})
    encoder = load_weights(config, spec.path)
    return Baseline(spec, encoder, {"kind": "weights", "path": str(spec.path), "sha256": _sha256(spec.path)})


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
