"""Checkpoints: written atomically, self-describing, loadable without the trainer.

A checkpoint is one ``torch.save`` dict:

- ``format``: ``"convssl-checkpoint/1"``
- ``step``: optimizer steps done; ``data``: the loader position to resume from
- ``config``: the fully resolved recipe (sections encoder, data, task, optim, train)
- ``encoder``: the backbone weights under the ORIGINAL model's keys (dense, head excluded)
- ``task``: the whole task's ``state_dict`` (encoder, heads, queues, momentum encoders)
- ``optimizer``, ``scaler``, ``rng``: everything else resume needs (the lr and wd schedules
  are functions of ``step``, so they need no state of their own)
- ``versions``: torch / torchvision / convssl versions and the git revision if known

Keys carry no ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefixes.

Everything in it is tensors, numbers, strings, lists, tuples and dicts, so ``load``
reads it with ``torch.load(weights_only=True)``: a file holding any other Python
object (a pickle whose ``__reduce__`` would run a command, say) is refused before
anything in it runs. Nor does the encoder builder its recipe names: ``encoder_config``
rebuilds ``torchvision:``/``timm:`` specs, and a user's ``package.module:callable`` only
when the caller names it in ``trust``. Checkpoints from the internet are safe to probe,
export and resume.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from convssl.atomic import write_atomic
from convssl.errors import ConvsslError

FORMAT = "convssl-checkpoint/1"
_STEP_FILE = re.compile(r"step-(\d+)\.pt$")


def save_atomic(obj: dict, path: str | Path) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous checkpoint intact, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load(path: str | Path, map_location="cpu") -> dict:
    """Load and check a convssl checkpoint, with a clear error for anything else."""
    path = Path(path)
    if path.is_dir():
        found = latest(path / "checkpoints") or latest(path)
        if found is None:
            raise ConvsslError(f"no checkpoint in {str(path)!r} (looked for checkpoints/step-*.pt)")
        path = found
    if not path.is_file():
        raise ConvsslError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"GLOBAL (\S+)", str(exc))
        raise ConvsslError(
            f"refused to load {str(path)!r}: it holds a Python object convssl never saves "
            f"({found[0] if found else 'an unsupported global'}), and unpickling it could run code; "
            "nothing in it was run. Use checkpoints written by convssl pretrain"
        ) from None
    except Exception as exc:
        raise ConvsslError(
            f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}: {exc}); "
            "is it truncated or not a convssl checkpoint?"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConvsslError(f"{str(path)!r} is not a convssl checkpoint (format {FORMAT} expected)")
    ckpt["path"] = str(path)
    return ckpt


def non_finite(tensors: dict) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` holding a NaN or an infinity."""
    return [k for k, v in tensors.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def require_finite(tensors: dict, path: str | Path, then: str, kind: str = "weights") -> None:
    """A ``ConvsslError`` naming the tensors in ``tensors`` (read from checkpoint ``path``)
    that hold a NaN or an infinity; ``then`` says what to do instead. A checkpoint of a
    diverged run would otherwise probe at chance level, or resume into a failure."""
    bad = non_finite(tensors)
    if bad:
        names = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise ConvsslError(f"checkpoint {str(path)!r} holds NaN or infinite {kind} in {len(bad)} tensor(s) "
                           f"({names}); {then}")


def latest(folder: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``folder`` (``step-NNNNNNNN.pt``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.search(p.name))]
    return max(found)[1] if found else None


def step_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


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
