"""One training step, the same for pretraining, fine-tuning, the budget's timed steps and
``convssl bench step``: forward (autocast) -> backward -> unscale -> clip -> the ranks agree
the step is finite -> optimizer step -> ``after_step`` (EMA teachers, momentum encoders).

``LoopState`` is what a step reads and changes; the learning-rate and weight-decay schedule
is set by the caller before it (``set_schedule``), since it is a function of the step alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as tdist
import torch.nn as nn

from convssl import dist as cdist
from convssl.train.finite import StepGuard, finite_step
from convssl.train.schedule import cosine, warmup_cosine


@dataclass
class LoopState:
    """What a training step reads and changes.

    ``model`` runs the batch (the task, or its DDP / ``torch.compile`` wrapper); ``task`` is
    the task beneath (``after_step``, ``state_dict``). ``step`` counts the steps taken,
    skipped ones included; ``total_steps`` is the run's length, as ``after_step`` sees it.
    ``guard`` (optional) undoes a skipped step's buffer writes and counts skips in a row.
    """

    model: nn.Module
    task: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None = None
    clip_grad: float = 0.0
    total_steps: int = 1
    step: int = 0
    guard: StepGuard | None = None
    trainable: list = field(init=False, repr=False)

    def __post_init__(self):
        self.trainable = [p for p in self.task.parameters() if p.requires_grad]


@dataclass
class StepResult:
    """``out``: the task's outputs plus ``grad_norm``; ``applied``: the update was made (the
    step was finite on every rank); ``stop``: a stop signal reached some rank."""

    out: dict
    applied: bool
    stop: bool


def train_step(state: LoopState, batch: dict, *, stop_requested: bool = False,
               lap: Callable[[str], None] | None = None) -> StepResult:
    """Take one optimizer step on ``batch`` (already on the device). A step whose loss,
    gradient norm or buffers are not finite on any rank is skipped on every rank (no
    update, no ``after_step``, buffers put back). ``lap(name)`` is called after the
    forward, the backward and the optimizer phases (``bench step`` times them)."""
    guard = state.guard
    if guard is not None:
        guard.before_forward()
    with torch.autocast(state.device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
        out = state.model(batch)
    loss = out["loss"]
    if lap is not None:
        lap("forward")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if lap is not None:
        lap("backward")
    state.scaler.unscale_(state.optimizer)
    # the total norm, clipped when asked (max_norm inf multiplies by exactly 1.0)
    out["grad_norm"] = torch.nn.utils.clip_grad_norm_(
        state.trainable, state.clip_grad if state.clip_grad > 0 else float("inf"))
    # fp16: the scaler skips overflowing steps itself; only a non-finite loss counts
    finite = finite_step(loss, loss if state.scaler.is_enabled() else out["grad_norm"])
    if guard is not None:
        finite &= guard.buffers_finite().to(finite.device)
    applied, stop = agree(finite, stop_requested)
    if applied:
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.task.after_step(state.step, state.total_steps)
        if guard is not None:
            guard.passed()
    else:
        if guard is not None:
            guard.skip()
        state.scaler.update()
    if lap is not None:
        lap("optimizer")
    state.step += 1
    return StepResult(out, applied, stop)


def agree(finite: torch.Tensor, stop_requested: bool) -> tuple[bool, bool]:
    """``(apply this step, stop after it)``, the same on every rank: a NaN on any rank
    skips the step everywhere, and a signal to any rank stops all at the same step."""
    flags = torch.stack([(~finite).to(torch.int32),
                         torch.tensor(int(stop_requested), dtype=torch.int32, device=finite.device)])
    if cdist.is_enabled():
        tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
    bad, stop = flags.tolist()
    return not bad, bool(stop)


def set_schedule(optimizer: torch.optim.Optimizer, step: int, total_steps: int, peak_lr: float,
                 warmup_steps: int, optim) -> tuple[float, float]:
    """Set step ``step``'s learning rate (linear warm-up, then cosine to ``min_lr_ratio`` x
    peak) and weight decay (``optim.weight_decay``, cosine to ``weight_decay_end`` when
    given) on every parameter group; returns ``(lr, wd)``. A group's ``lr_scale`` (layer-wise
    decay) scales its rate; groups without ``adapt`` (biases, norms) keep their weight decay."""
    lr = warmup_cosine(step, total_steps, peak_lr, warmup_steps, peak_lr * optim.min_lr_ratio)
    wd = optim.weight_decay if optim.weight_decay_end is None else cosine(
        step, total_steps, optim.weight_decay, optim.weight_decay_end)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
        if group.get("adapt"):
            group["weight_decay"] = wd
    return lr, wd
