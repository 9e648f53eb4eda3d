"""Baseline encoders to probe beside a pretrained one: ``random`` and ``weights:PATH``.

- ``random`` (or ``random:SEED``): the same architecture at random init, drawn after
  ``torch.manual_seed(SEED)`` (default 0) as ``convssl probe --encoder`` draws it, in a
  forked RNG so the caller's random stream does not move. The baseline every pretext
  task must beat (Doersch et al. 2015 and every probe since report it).
- ``weights:PATH``: a state dict under the original model's keys loaded, strictly, into
  the same architecture, exactly as ``encoder.init`` loads one: a ``convssl export``
  (``.pth``/``.pt`` or ``.safetensors``), a plain ``torch.save(model.state_dict())`` or a
  convssl checkpoint (its encoder). Keys of the original classifier head, which the encoder
  does not have, are dropped; a first convolution with other input channels is adapted;
  any other missing or unexpected key, or a shape that differs, is an error naming it.

Specs are checked (``parse_baseline``) before any feature is computed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from convssl.encoders import Encoder, EncoderConfig, build_encoder
from convssl.errors import ConfigError

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


def load_weights(config: EncoderConfig, path: str | Path, seed: int = 0) -> tuple[Encoder, str]:
    """``config``'s architecture with the weights of ``path`` and the file's sha256: read and
    loaded as ``encoder.init`` reads and loads them (``convssl.encoders.init_weights``: the
    original classifier head dropped, a first convolution with other input channels adapted,
    any other key or shape that does not fit an error naming it)."""
    from convssl.encoders.init_weights import load_into, read_init

    encoder = random_init(config, seed)
    weights = read_init(str(path), config.spec)
    load_into(encoder, weights.tensors, what=f"--baseline weights:{path}")
    return encoder, weights.sha256


def build_baseline(spec: BaselineSpec, config: EncoderConfig) -> Baseline:
    """The baseline encoder of ``spec`` in the architecture of ``config``."""
    if config is None:
        raise ConfigError("a baseline needs the probed encoder's architecture (an EncoderConfig); this encoder has none")
    if spec.kind == "random":
        return Baseline(spec, random_init(config, spec.seed), {"kind": "random", "seed": spec.seed})
    encoder, sha256 = load_weights(config, spec.path)
    return Baseline(spec, encoder, {"kind": "weights", "path": str(spec.path), "sha256": sha256})
