"""A run's checkpoints: written every ``every`` steps and at the last step of each
invocation, atomically, by the main rank, and pruned to the newest ``keep``; never one
holding NaN or infinite weights (raised instead, naming the last good checkpoint).

What a checkpoint holds beyond the step, every rank's RNG state and the versions is the
run's to say (``contents``): pretraining saves its task, fine-tuning its classifier and
evaluation history (the format: ``convssl.checkpoint.files``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.distributed as tdist
import torch.nn as nn

from convssl import checkpoint as ckpt_io
from convssl import dist as cdist
from convssl.atomic import NoSpaceError
from convssl.checkpoint.versions import versions
from convssl.errors import ConvsslError
from convssl.train.state import all_ranks_rng_state


class Checkpointer:
    """``save(step, last_step=...)`` when due; ``write(step)`` now (a stop, a divergence)."""

    def __init__(self, folder: Path, task: nn.Module, info, *, every: int, keep: int,
                 contents: Callable[[int], dict]):
        self.folder, self.task, self.info = Path(folder), task, info
        self.every, self.keep, self.contents = every, keep, contents

    def latest(self) -> Path | None:
        return ckpt_io.latest(self.folder)

    def save(self, step: int, *, last_step: bool = False) -> Path | None:
        """A checkpoint of ``step`` when ``every`` divides it or it is the invocation's last."""
        if last_step or (self.every and step % self.every == 0):
            return self.write(step)
        return None

    def write(self, step: int) -> Path:
        """A checkpoint of this step (every rank calls it: the checks and RNG states are collective)."""
        bad = ckpt_io.non_finite(self.task.state_dict())
        if _any_rank(bool(bad), next(self.task.parameters()).device):
            last = self.latest()
            raise ConvsslError(
                f"the weights became NaN or infinite by step {step} "
                + (f"({len(bad)} tensor(s), e.g. {bad[0]}); " if bad else "(on another rank); ")
                + "no checkpoint was written. "
                + (f"The last good checkpoint is {last}; " if last else "")
                + "lower optim.lr_per_256, set optim.clip_grad (e.g. 3.0) or use train.precision=fp32, then "
                + ("--resume" if last else "start again"))
        rng = all_ranks_rng_state(self.info)
        path = ckpt_io.step_path(self.folder, step)
        if self.info.is_main:
            state = {"format": ckpt_io.FORMAT, "step": step, **self.contents(step), "rng": rng, "versions": versions()}
            _save_or_explain(state, path, step)
            found = sorted(self.folder.glob("step-*.pt"))
            for old in found[: max(0, len(found) - max(1, self.keep))]:
                old.unlink()
        cdist.barrier()
        return path


def _save_or_explain(state: dict, path: Path, step: int) -> None:
    """``save_atomic``; on a full disk, the error says what survives and how to go on."""
    try:
        ckpt_io.save_atomic(state, path)
    except NoSpaceError as exc:
        last = ckpt_io.latest(path.parent)
        raise NoSpaceError(f"the checkpoint of step {step} was not saved: {exc}"
                           + (f"; the last checkpoint, {last}, is intact: continue from it with --resume"
                              if last else "")) from None


def _any_rank(flag: bool, device: torch.device) -> bool:
    if not cdist.is_enabled():
        return flag
    t = torch.tensor(int(flag), dtype=torch.int32, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t)
