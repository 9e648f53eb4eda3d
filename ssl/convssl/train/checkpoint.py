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
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from convssl.errors import ConvsslError

FORMAT = "convssl-checkpoint/1"
_STEP_FILE = re.compile(r"step-(\d+)\.pt$")


def save_atomic(obj: dict, path: str | Path) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous checkpoint intact, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise ConvsslError(
            f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}: {exc}); "
            "is it truncated or not a convssl checkpoint?"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConvsslError(f"{str(path)!r} is not a convssl checkpoint (format {FORMAT} expected)")
    ckpt["path"] = str(path)
    return ckpt


def latest(folder: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``folder`` (``step-NNNNNNNN.pt``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.search(p.name))]
    return max(found)[1] if found else None


def step_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def load_encoder(path: str | Path):
    """Rebuild the pretrained Encoder of a checkpoint (dense, in eval-ready form).

    Returns ``(encoder, ckpt)``; ``ckpt["config"]`` has the data section (size, channels,
    mean, std) an evaluation needs.
    """
    from convssl.config import from_dict
    from convssl.encoders import EncoderConfig, build_encoder

    ckpt = load(path)
    enc_cfg = from_dict(EncoderConfig, ckpt["config"]["encoder"], path="encoder")
    encoder = build_encoder(enc_cfg)
    missing, unexpected = encoder.model.load_state_dict(ckpt["encoder"], strict=False)
    if missing or unexpected:
        raise ConvsslError(
            f"checkpoint {ckpt['path']!r} does not fit encoder {enc_cfg.spec!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return encoder, ckpt
