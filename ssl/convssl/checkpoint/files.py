"""The checkpoint file: its format, written atomically, read safely, found by step.

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
