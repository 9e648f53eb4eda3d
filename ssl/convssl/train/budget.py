"""A wall-clock budget (``train.budget``, ``pretrain --budget 20m``) turned into a step count.

The run's first steps are timed after start-up (model built, loader started), the total
step count is fixed so the run ends within the budget, and that count becomes the run's
``train.max_steps``: the warm-up (in epochs, converted to steps by ``make_plan``), the
learning-rate and weight-decay schedules and the momentum schedule span exactly it, as if
the user had written it. The decision is recorded in ``config.yaml`` and every checkpoint
(``train.max_steps`` and ``budget``), so ``--resume`` continues the same plan and never
measures again. Under torchrun rank 0 decides and broadcasts.

Exactness: the timed steps are real training steps on the run's first batches, but their
effect is undone: the task, optimizer, scaler and RNG states are snapshotted before and
restored after, and the batches they used are kept and fed to the run again as its first
batches. A budget run is therefore bit-identical to a run with ``train.max_steps`` set to
the decided count (tested), at the cost of the few timed steps done twice.

The budget clock starts at the first timed step (start-up before it is not counted).
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import replace

import torch

from convssl import dist as cdist
from convssl import short_budget
from convssl.errors import ConfigError
from convssl.train.state import rng_state, set_rng_state
from convssl.train_config import parse_budget

SAFETY = 0.95  # of the time left after timing: checkpoints and logging are not in the timed steps
WARM_STEPS = 2  # untimed: allocation, cudnn autotuning, torch.compile


def format_seconds(seconds: float) -> str:
    """A budget ``parse_budget`` reads, rounded up: ``95`` -> ``95s``, ``1250`` -> ``21m``, ``40000`` -> ``11.2h``."""
    if seconds <= 600:
        return f"{math.ceil(seconds)}s"
    if seconds <= 36000:
        return f"{math.ceil(seconds / 60)}m"
    return f"{math.ceil(seconds / 360) / 10:g}h"


def resumed(recipe, state: dict):
    """The resumed run's recipe with the recorded step count of its budget (no new timing).

    A resumed command repeats ``--budget`` (so ``train.max_steps`` is 0 there); the
    checkpoint's ``train.max_steps`` is the decision."""
    saved = (state.get("config") or {}).get("train", {})
    if recipe.train.budget and not recipe.train.max_steps and saved.get("budget") == recipe.train.budget:
        recipe = replace(recipe, train=replace(recipe.train, max_steps=int(saved["max_steps"])))
        short = (state.get("budget") or {}).get("short_budget")
        if short:  # the decided run took the recipe's short-budget optimizer settings: take them again
            recipe = replace(recipe, optim=short_budget.short_optim(recipe.optim, short["run_epochs"]))
    return recipe


def needs_fitting(recipe, state: dict | None) -> bool:
    """A fresh run with a budget and no step count decided yet (a run's config.yaml used as a
    recipe holds its decided ``train.max_steps``: that is used, not timed again)."""
    return state is None and bool(recipe.train.budget) and not recipe.train.max_steps


def fit(recipe, plan_for, batches, *, model, task, optimizer, scaler, amp_dtype, device, to_device, info):
    """Time real steps, decide the total, undo the timed steps.

    ``plan_for(recipe)`` is the trainer's ``make_plan`` for this data and world size;
    ``batches`` the rank's batch iterator. Returns ``(recipe, plan, batches)``: the recipe
    with ``train.max_steps`` decided, its plan (``plan.budget`` the record) and an iterator
    that gives the timed batches again, then the rest.
    """
    budget_s = parse_budget(recipe.train.budget)
    snapshot = _snapshot(task, optimizer, scaler)
    used: list = []

    def step_once() -> float:
        t0 = time.perf_counter()
        batch = next(batches)
        used.append(batch)
        _timed_step(model, task, optimizer, scaler, amp_dtype, device, to_device(batch), recipe.optim.clip_grad)
        return time.perf_counter() - t0

    clock = time.perf_counter()
    warm = [step_once() for _ in range(WARM_STEPS)]
    count = cdist.broadcast_object(_timed_count(budget_s, warm[-1], recipe.data.workers))
    t0 = time.perf_counter()
    for _ in range(count):
        step_once()
    per_step = (time.perf_counter() - t0) / count
    elapsed = time.perf_counter() - clock
    decision = cdist.broadcast_object(_decide(recipe, plan_for, budget_s, elapsed, per_step, count)
                                      if info.is_main else None)
    _restore(task, optimizer, scaler, snapshot)
    if "error" in decision:
        raise ConfigError(decision["error"])
    recipe = replace(recipe, train=replace(recipe.train, max_steps=decision["total_steps"]))
    if "short_budget" in decision:
        recipe = replace(recipe, optim=short_budget.short_optim(recipe.optim, decision["short_budget"]["run_epochs"]))
    plan = replace(plan_for(recipe), budget=decision)
    if info.is_main:
        print(f"budget {recipe.train.budget}: {plan.total_steps} steps at {decision['seconds_per_step']:.3g} s/step "
              f"measured over {count} steps, warm-up {plan.warmup_steps} steps", flush=True)
        if "short_budget" in decision:
            print(f"budget {recipe.train.budget}: a run of {decision['short_budget']['run_epochs']:.3g} epochs, under "
                  f"optim.short_budget.below_epochs: optimizer settings {decision['short_budget']['settings']} "
                  "(the recipe's short-budget choice) replace the recipe's", flush=True)
    return recipe, plan, itertools.chain(used, batches)


def _timed_count(budget_s: float, step_s: float, workers: int) -> int:
    """How many steps to time: about 3% of the budget (at most 30 s), at least 3; and, where
    10% of the budget allows, past the loader's prefetched batches (2 per worker), so a run
    the data holds back is timed at its sustained rate."""
    step_s = max(step_s, 1e-6)
    count = max(3, math.ceil(min(0.03 * budget_s, 30.0) / step_s))
    count = max(count, min(5 + 2 * workers, int(0.1 * budget_s / step_s)))
    return int(min(count, 500))


def _decide(recipe, plan_for, budget_s: float, elapsed: float, per_step: float, measured: int) -> dict:
    """Rank 0's decision: the step count that fills what the timing left of the budget."""
    left = budget_s - elapsed
    total = int(SAFETY * left / per_step) if left > 0 else 0
    record = {"budget": recipe.train.budget, "seconds": budget_s, "seconds_per_step": per_step,
              "measured_steps": measured, "timing_seconds": elapsed, "total_steps": total}
    decided = replace(recipe, train=replace(recipe.train, max_steps=max(total, 1)))
    run_epochs = max(total, 1) / plan_for(decided).steps_per_epoch
    if short_budget.applies(recipe.optim, run_epochs):
        decided = replace(decided, optim=short_budget.short_optim(recipe.optim, run_epochs))
        record["short_budget"] = {"run_epochs": run_epochs, "settings": {
            k: getattr(decided.optim, k) for k in sorted(recipe.optim.short_budget)
            if k not in short_budget.CONTROL_KEYS} | {"warmup_epochs": decided.optim.warmup_epochs}}
    warmup = plan_for(decided).warmup_steps
    need = max(warmup, 1)
    if total < need:
        minimum = format_seconds(elapsed + need * per_step / SAFETY)
        what = (f"the warm-up (optim.warmup_epochs {decided.optim.warmup_epochs:g} = {warmup} steps)" if warmup
                else "one step")
        return {"error": f"budget {recipe.train.budget} is too small for {what} at {per_step:.3g} s/step "
                         f"(measured over {measured} steps, {elapsed:.1f} s of timing): give at least --budget "
                         f"{minimum}" + (", or shorten optim.warmup_epochs" if warmup else "")}
    return record


def _timed_step(model, task, optimizer, scaler, amp_dtype, device, batch, clip: float) -> None:
    """One training step as the loop takes it (``convssl.train.step.train_step``)."""
    from convssl.train.step import LoopState, train_step

    state = LoopState(model=model, task=task, optimizer=optimizer, scaler=scaler, device=device,
                      amp_dtype=amp_dtype, clip_grad=clip)
    float(train_step(state, batch).out["loss"].detach())  # waits for the device: the step is done when timed


def _snapshot(task, optimizer, scaler) -> dict:
    return {"task": copy.deepcopy(task.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict()),
            "scaler": copy.deepcopy(scaler.state_dict()), "rng": copy.deepcopy(rng_state())}


def _restore(task, optimizer, scaler, snapshot: dict) -> None:
    task.load_state_dict(snapshot["task"])
    optimizer.load_state_dict(snapshot["optimizer"])
    if snapshot["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(snapshot["scaler"])
    optimizer.zero_grad(set_to_none=True)
    set_rng_state(snapshot["rng"])
