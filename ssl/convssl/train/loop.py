"""The training loop, readable top to bottom (nanoGPT's order, torchtitan's shape):
batch -> ``train_step`` (task -> backward -> clip -> step -> after_step) -> log ->
callbacks -> pictures -> ``checkpointer.save(step, last_step=...)``.

Pretraining and fine-tuning (a classifier task) both run it; what differs between them
is what they build before it (the task, the optimizer, the loader), what a checkpoint
holds (the ``Checkpointer``'s contents) and the callbacks they hand it (the online
monitor, fine-tuning's evaluation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from convssl import dist as cdist
from convssl.errors import ConvsslError
from convssl.train.callbacks import Callback, due
from convssl.train.checkpointer import Checkpointer
from convssl.train.interrupt import StopRequest
from convssl.train.plan import Plan
from convssl.train.step import LoopState, set_schedule, train_step

RESUME_HINT = "continue with the same command plus --resume (a command with --resume auto as it is)"


@dataclass
class Window:
    """Sums of the logged scalars over the steps since the last log line."""

    steps: int = 0
    wait: float = 0.0
    sums: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)

    def add(self, out: dict) -> None:
        for k, v in out.items():
            if torch.is_tensor(v) and v.numel() == 1:
                self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.steps += 1

    def reset(self) -> None:
        self.steps, self.wait, self.sums, self.t0 = 0, 0.0, {}, time.perf_counter()

    def means(self) -> dict[str, float]:
        """Every scalar's mean over the window and the ranks: one stacked all-reduce and one
        device read for all keys; skipped steps are not averaged."""
        names = sorted(self.sums)
        n = max(1, self.steps)
        means = cdist.all_reduce_mean(torch.stack([self.sums[k] for k in names]) / n).tolist() if names else []
        return dict(zip(names, means))


def train(state: LoopState, batches: Iterator[dict], *, plan: Plan, optim, train_cfg, end: int,
          to_device: Callable[[dict], dict], checkpointer: Checkpointer, log, bar,
          callbacks: Iterable[Callback] = (), is_main: bool = True) -> dict:
    """Run steps ``state.step`` .. ``end`` (``end`` < ``plan.total_steps`` for a job that
    stops early with a checkpoint); ``state.guard`` counts the non-finite steps (a run of
    ``train.max_bad_steps`` in a row stops it with a checkpoint of the last finite state).
    Returns the summary: steps, the last logged metrics, seconds, images/s, skipped steps,
    the last checkpoint and each callback's ``on_end``."""
    callbacks = list(callbacks)
    window, last_ckpt, last_scalars = Window(), None, {}
    t_start, start_step = time.perf_counter(), state.step
    with StopRequest() as stop:
        while state.step < end:
            t0 = time.perf_counter()
            batch = to_device(_next_batch(batches, state.step, checkpointer, cdist.is_enabled()))
            window.wait += time.perf_counter() - t0

            lr, wd = set_schedule(state.optimizer, state.step, plan.total_steps, plan.peak_lr, plan.warmup_steps, optim)
            result = train_step(state, batch, stop_requested=stop.requested)
            step, guard = state.step, state.guard

            if result.applied:
                window.add(result.out)
            if step % max(1, train_cfg.log_every) == 0 or step == end or guard.diverged or result.stop:
                last_scalars = _log(window, step, lr, wd, plan, log, bar, guard.skipped)
            for callback in callbacks:  # the online monitor, fine-tuning's evaluation
                scalars = callback.on_step(step, plan.total_steps, state.task)
                if scalars and log:
                    log.scalars(step, scalars)
                if callback.note is not None:
                    bar.note = callback.note
            if result.applied and is_main and due(step, train_cfg.image_every, plan.total_steps):
                with torch.no_grad():
                    picture = state.task.pictures(batch)
                if picture is not None:
                    log.picture(step, picture)
            if guard.diverged:
                path = checkpointer.write(step)
                raise ConvsslError(
                    f"the loss or the gradients were NaN or infinite for {guard.in_a_row} steps in a row (up to "
                    f"step {step}; {guard.skipped} skipped in all), so those updates were not applied. The finite "
                    f"state is saved to {path}; lower optim.lr_per_256, set optim.clip_grad (e.g. 3.0) or use "
                    "train.precision=fp32, then --resume")
            if result.stop:
                last_ckpt = checkpointer.write(step)
                raise ConvsslError(f"interrupted at step {step}; checkpoint saved to {last_ckpt}; {RESUME_HINT}")
            last_ckpt = checkpointer.save(step, last_step=step == end) or last_ckpt
    seconds = time.perf_counter() - t_start
    done = state.step - start_step
    summary = {"steps": state.step, "metrics": last_scalars, "seconds": seconds,
               "img_per_s": done * plan.global_batch / seconds if seconds > 0 else 0.0,
               "skipped_steps": state.guard.skipped,
               "checkpoint": str(last_ckpt or checkpointer.latest() or "") or None}
    for callback in callbacks:
        summary.update(callback.on_end())
    return summary


def _next_batch(batches: Iterator[dict], step: int, checkpointer: Checkpointer, distributed: bool) -> dict:
    """The next batch; a loader worker that died (the out-of-memory killer, a kill) ends the
    run like an interrupt: with a checkpoint of this step, exact to resume, and one line.
    Under torchrun the other ranks are inside a collective by now: no checkpoint can be
    agreed on, so the message names the last one."""
    try:
        return next(batches)
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        why = str(exc).split(". ")[0].rstrip(".")
        if distributed:
            last = checkpointer.latest()
            raise ConvsslError(f"{why} at step {step} (killed, e.g. by the out-of-memory killer?); "
                               + (f"the last checkpoint is {last}: continue with --resume" if last else
                                  "no checkpoint was written yet")
                               + "; lower data.workers or give the job more memory if it recurs") from None
        path = checkpointer.write(step)
        raise ConvsslError(f"{why} at step {step} (killed, e.g. by the out-of-memory killer?); checkpoint saved to "
                           f"{path}: continue with --resume; lower data.workers or give the job more memory if it "
                           "recurs") from None


def _log(window: Window, step: int, lr: float, wd: float, plan: Plan, log, bar, skipped: int = 0) -> dict:
    now = time.perf_counter()
    elapsed = now - window.t0
    scalars = window.means()
    if skipped:
        scalars["skipped_steps"] = float(skipped)
    img_s = max(1, window.steps) * plan.global_batch / max(elapsed, 1e-9)
    share = window.wait / max(elapsed, 1e-9)
    if log:
        log.scalars(step, {**scalars, "lr": lr, "wd": wd, "epoch": step / plan.steps_per_epoch,
                           "img_per_s": img_s, "data_wait": share})
    bar.update(step, {k: v for k, v in scalars.items() if k in ("loss", "acc")}, img_s, share)
    window.reset()
    return scalars
