"""The pretraining loop, readable top to bottom (nanoGPT's order):
batch -> task -> backward -> clip -> step -> after_step -> log -> checkpoint.

One process, or one per device under ``torchrun`` (DDP: NCCL on GPU, gloo on CPU).
The global batch ``data.batch_size`` is split over ranks; the learning rate is scaled
once, here, from ``optim.lr_per_256``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as tdist
import yaml

from convssl import dist as cdist
from convssl.atomic import NoSpaceError, clean_stale_temps
from convssl.checkpoint.versions import versions
from convssl.encoders import build_encoder
from convssl.encoders.init_weights import apply_init
from convssl.errors import ConfigError, ConvsslError
from convssl.input_memory import check_input_fits
from convssl.recipe import Recipe, check_batch, recipe_from_dict
from convssl.tasks.registry import build_task
from convssl.run_lock import RunLock
from convssl.train import budget as budget_fit
from convssl import checkpoint as ckpt_io
from convssl.train.finite import StepGuard, finite_step
from convssl.train.interrupt import StopRequest
from convssl.train.precision import autocast_dtype
from convssl.train.optim import build_optimizer
from convssl.train.progress import Progress
from convssl.train.run_log import RunLog
from convssl.train.schedule import cosine, warmup_cosine
from convssl.train.state import all_ranks_rng_state, seed_all, set_rng_state
from convssl.workers import stop_workers

# Keys a resumed run may change (how long and how often); anything else must match.
RESUMABLE_CHANGES = {"train.epochs", "train.max_steps", "train.ckpt_every", "train.log_every",
                     "train.image_every", "train.keep_checkpoints", "train.max_bad_steps", "data.workers",
                     "train.monitor_every"}
# The remedies for a diverged run: they may change on resume, with a warning (the run is
# then no longer the uninterrupted experiment).
REMEDY_CHANGES = {"optim.lr_per_256", "optim.clip_grad", "train.precision"}


@dataclass
class Plan:
    """Sizes derived once from the recipe, the data and the world size."""

    global_batch: int
    per_rank_batch: int
    num_samples: int | None
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    budget: dict | None = None  # a train.budget's decision (convssl.train.budget): recorded, never re-timed


def pretrain(recipe: Recipe, data: str, out: str | Path, *, resume: bool | str = False,
             device: str | None = None, batches=None, progress: bool = True,
             stop_after: int | None = None, monitor: str | None = None) -> dict:
    """Pretrain ``recipe`` on shards ``data`` into run directory ``out``.

    ``batches`` (an iterator of batch dicts) replaces the shard loader; tests use it to
    give every world size the same global batches. ``stop_after`` ends this invocation
    after that many steps with a checkpoint, the schedule unchanged (time-limited jobs
    continue with ``resume=True``). ``monitor`` (labeled shards) turns on the online probe,
    kNN and collapse check every ``train.monitor_every`` steps (``convssl.train.monitor``).
    ``resume``: False starts a run (refused where ``out`` holds checkpoints), True continues
    the latest checkpoint (refused where there is none), ``"auto"`` continues it when there
    is one and starts otherwise, so one command line serves the first start, a requeued job
    and an elastic restart. ``out`` is locked while the run works (``convssl.run_lock``).
    Returns a summary: steps, final metrics, images/s, seconds, last checkpoint.
    """
    if resume not in (False, True, "auto"):
        raise ConfigError(f"resume must be False, True or 'auto', not {resume!r}")
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after must be at least 1 (steps to run before stopping), not {stop_after}")
    dev = cdist.training_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    info = cdist.init(dev)
    run_dir = Path(out)
    ckpt_dir = run_dir / "checkpoints"
    # Everything that can be wrong with the user's input is checked before the model is
    # built and before any loader worker starts: the run dir, the data, the sizes.
    urls, manifest = (None, None) if batches is not None else _resolve(data)
    lock, state = _claim_run_dir(run_dir, resume, info)
    try:
        return _pretrain_claimed(recipe, data, run_dir, state, urls, manifest, info, dev, batches=batches,
                                 progress=progress, stop_after=stop_after, monitor=monitor)
    finally:
        if lock is not None:
            lock.release()


def _pretrain_claimed(recipe: Recipe, data: str, run_dir: Path, state: dict | None, urls, manifest, info,
                      dev: torch.device, *, batches, progress: bool, stop_after: int | None,
                      monitor: str | None) -> dict:
    """``pretrain`` once rank 0 holds the run directory and the start is decided."""
    ckpt_dir = run_dir / "checkpoints"
    if state is not None:
        recipe = _merge_resumed_recipe(state, budget_fit.resumed(recipe, state), info)
    fitting = budget_fit.needs_fitting(recipe, state)  # the step count is decided after timed steps
    if state is None and recipe.train.budget and not fitting:
        _warn(info, f"train.budget {recipe.train.budget} with train.max_steps {recipe.train.max_steps}: the steps are "
              "given (as a budget run's config.yaml records them), not timed; --budget (or train.max_steps=0) times them")
    plan = make_plan(recipe, manifest, info.world_size)
    if state is not None and state.get("budget"):
        plan.budget = state["budget"]
    if not fitting:
        _warn_about_plan(recipe, plan, info)
    check_input_fits(plan.per_rank_batch, recipe.data.channels, recipe.data.size, dev,
                     names="data.size or data.batch_size")

    seed_all(recipe.train.seed)
    encoder = build_encoder(recipe.encoder)
    if state is None:  # starting weights (encoder.init); a resumed run has its own
        apply_init(encoder, recipe.encoder.init, note=lambda message: _note(info, message))
    else:
        encoder.init_source = state.get("init")
    task = build_task(recipe.task, encoder, recipe.data)
    if info.enabled and dev.type == "cuda" and recipe.train.sync_bn and not task.manages_batchnorm_sync:
        task = torch.nn.SyncBatchNorm.convert_sync_batchnorm(task)
    task.to(dev)
    if recipe.train.channels_last:
        task.to(memory_format=torch.channels_last)

    optimizer, optimizer_settings = build_optimizer(task, recipe.optim, plan.peak_lr), recipe.optim
    amp_dtype = autocast_dtype(recipe.train.precision, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype is torch.float16)
    step = 0
    if state is not None:
        task.load_state_dict(state["task"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] and scaler.is_enabled():  # empty when saved without fp16
            scaler.load_state_dict(state["scaler"])
        step = state["step"]

    model = task
    if info.enabled:
        # A task that syncs its own BatchNorm keeps its buffers consistent itself (SparK's
        # sparse BN; MoCo: per-rank BN by design, a queue and momentum encoder identical on
        # every rank by construction): DDP need not re-broadcast them (the queue!) every forward.
        model = torch.nn.parallel.DistributedDataParallel(task, device_ids=[dev.index] if dev.type == "cuda" else None,
                                                          **_buffer_sync(not task.manages_batchnorm_sync))
    if recipe.train.compile:
        model = torch.compile(model)

    log = RunLog(run_dir) if info.is_main else None
    watch = _monitor(monitor, recipe, info)
    bar = Progress(plan.total_steps, step, enabled=progress and info.is_main)
    try:
        if batches is None:
            batches = _shard_batches(recipe, urls, manifest, info, plan, start_batches=step,
                                     transform=task.loader_transform())
        # Workers start here; from now on every exit path goes through ``finally``.
        # RNG last: starting the loader (iter draws a base seed) must not shift the random
        # stream of a resumed run against the uninterrupted one.
        batches = iter(batches)
        torch.manual_seed(recipe.train.seed * 1009 + info.rank)
        if state is not None:
            _restore_rng(state, info, recipe.train.seed)
        feed = batches
        if fitting:  # time real steps, fix train.max_steps, undo them (convssl.train.budget)
            recipe, plan, feed = budget_fit.fit(
                recipe, lambda r: make_plan(r, manifest, info.world_size), batches, model=model, task=task,
                optimizer=optimizer, scaler=scaler, amp_dtype=amp_dtype, device=dev, info=info,
                to_device=lambda b: _to_device(b, dev, recipe.train.channels_last))
            if recipe.optim != optimizer_settings:  # the recipe's optim.short_budget (convssl.train.short_budget)
                optimizer = build_optimizer(task, recipe.optim, plan.peak_lr)
            _warn_about_plan(recipe, plan, info)
            bar.total, bar.t0 = plan.total_steps, time.perf_counter()
        if info.is_main:
            _write_config(run_dir, recipe, data, info, plan, init=encoder.init_source)
        end = plan.total_steps if stop_after is None else min(plan.total_steps, step + stop_after)
        summary = _loop(model, task, optimizer, scaler, amp_dtype, feed, recipe, plan, info,
                        dev, step, end, ckpt_dir, log, bar, watch)
    finally:
        stop_workers(batches)
        bar.close()
        if log:
            log.close()
    if info.enabled and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()
    return summary


def make_plan(recipe: Recipe, manifest, world_size: int) -> Plan:
    g = recipe.data.batch_size
    check_batch(recipe, world_size)
    if g % world_size:
        raise ConfigError(f"data.batch_size {g} is not divisible by the {world_size} processes; "
                          f"use a multiple of {world_size}")
    n = manifest.count if manifest is not None else None
    if n is not None and n < g:
        raise ConfigError(f"the data has {n} samples, fewer than one batch (data.batch_size={g}); "
                          "lower data.batch_size")
    steps_per_epoch = max(1, n // g) if n else 0
    if recipe.train.max_steps > 0:
        total = recipe.train.max_steps
    elif steps_per_epoch:
        total = max(1, math.ceil(recipe.train.epochs * steps_per_epoch))
    elif recipe.train.budget:
        total = 1  # a placeholder until the budget's timed steps decide (convssl.train.budget.fit)
    else:
        raise ConfigError("the shards have no manifest with a sample count: give train.max_steps (--max-steps)")
    spe = steps_per_epoch or total
    return Plan(global_batch=g, per_rank_batch=g // world_size, num_samples=n, steps_per_epoch=spe,
                total_steps=total, warmup_steps=round(recipe.optim.warmup_epochs * spe),
                peak_lr=recipe.optim.lr_per_256 * g / 256)


def _loop(model, task, optimizer, scaler, amp_dtype, batches, recipe, plan, info, dev, step,
          end, ckpt_dir, log, bar, watch=None) -> dict:
    cfg, ocfg = recipe.train, recipe.optim
    final_lr = plan.peak_lr * ocfg.min_lr_ratio
    trainable = [p for p in task.parameters() if p.requires_grad]
    guard = StepGuard(task, cfg.max_bad_steps)
    window = {"n": 0, "t": time.perf_counter(), "wait": 0.0, "sums": {}}
    last_ckpt, last_scalars, t_start, start_step = None, {}, time.perf_counter(), step
    it = batches
    with StopRequest() as stop:
        while step < end:
            t0 = time.perf_counter()
            batch = _to_device(_next_batch(it, task, optimizer, scaler, step, recipe, ckpt_dir, info, plan),
                               dev, recipe.train.channels_last)
            window["wait"] += time.perf_counter() - t0

            lr = warmup_cosine(step, plan.total_steps, plan.peak_lr, plan.warmup_steps, final_lr)
            wd = ocfg.weight_decay if ocfg.weight_decay_end is None else cosine(
                step, plan.total_steps, ocfg.weight_decay, ocfg.weight_decay_end)
            for group in optimizer.param_groups:
                group["lr"] = lr
                if group["adapt"]:  # weights; biases and norms keep weight decay 0
                    group["weight_decay"] = wd

            guard.before_forward()
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(batch)
            loss = out["loss"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            # the total norm, clipped when asked (max_norm inf multiplies by exactly 1.0)
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                trainable, ocfg.clip_grad if ocfg.clip_grad > 0 else float("inf"))
            # fp16: the scaler skips overflowing steps itself; only a non-finite loss counts
            finite = finite_step(loss, loss if scaler.is_enabled() else out["grad_norm"])
            finite &= guard.buffers_finite().to(finite.device)
            ok, stop_now = _agree(finite, stop.requested)  # the same decision on every rank
            if ok:
                scaler.step(optimizer)
                scaler.update()
                task.after_step(step, plan.total_steps)
                guard.passed()
            else:
                guard.skip()
                scaler.update()
            step += 1

            if ok:
                for k, v in out.items():
                    if torch.is_tensor(v) and v.numel() == 1:
                        window["sums"][k] = window["sums"].get(k, 0.0) + v.detach().float()
                window["n"] += 1
            if step % max(1, cfg.log_every) == 0 or step == end or guard.diverged or stop_now:
                last_scalars = _log(window, step, lr, wd, plan, info, log, bar, guard.skipped)
            # every periodic event also fires once at the run's last step (a 4-step run with
            # monitor_every 100 would otherwise end without a single monitor figure)
            last_step = step == plan.total_steps
            if watch is not None and cfg.monitor_every and (step % cfg.monitor_every == 0 or last_step):
                log.scalars(step, watch.evaluate(task.export_encoder()))
                bar.note = watch.note
            if ok and cfg.image_every and (step % cfg.image_every == 0 or last_step) and info.is_main:
                with torch.no_grad():
                    picture = task.pictures(batch)
                if picture is not None:
                    log.picture(step, picture)
            if guard.diverged:
                path = _save(task, optimizer, scaler, step, recipe, ckpt_dir, info, plan)
                raise ConvsslError(
                    f"the loss or the gradients were NaN or infinite for {guard.in_a_row} steps in a row (up to "
                    f"step {step}; {guard.skipped} skipped in all), so those updates were not applied. The finite "
                    f"state is saved to {path}; lower optim.lr_per_256, set optim.clip_grad (e.g. 3.0) or use "
                    "train.precision=fp32, then --resume")
            if stop_now:
                last_ckpt = _save(task, optimizer, scaler, step, recipe, ckpt_dir, info, plan)
                raise ConvsslError(f"interrupted at step {step}; checkpoint saved to {last_ckpt}; "
                                   "continue with the same command plus --resume (a command with --resume auto as it is)")
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == end:
                last_ckpt = _save(task, optimizer, scaler, step, recipe, ckpt_dir, info, plan)
    seconds = time.perf_counter() - t_start
    done = step - start_step
    return {"steps": step, "metrics": last_scalars, "seconds": seconds,
            "img_per_s": done * plan.global_batch / seconds if seconds > 0 else 0.0,
            "skipped_steps": guard.skipped,
            # the online monitor's last check: kNN with its interval, gain over random init, verdict
            "monitor": watch.summary if watch is not None and watch.summary else None,
            "checkpoint": str(last_ckpt or ckpt_io.latest(ckpt_dir) or "") or None}


def _next_batch(it, task, optimizer, scaler, step, recipe, ckpt_dir, info, plan) -> dict:
    """The next batch; a loader worker that died (the out-of-memory killer, a kill) ends the
    run like an interrupt: with a checkpoint of this step, exact to resume, and one line.
    Under torchrun the other ranks are inside a collective by now: no checkpoint can be
    agreed on, so the message names the last one."""
    try:
        return next(it)
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        why = str(exc).split(". ")[0].rstrip(".")
        if info.enabled:
            last = ckpt_io.latest(ckpt_dir)
            raise ConvsslError(f"{why} at step {step} (killed, e.g. by the out-of-memory killer?); "
                               + (f"the last checkpoint is {last}: continue with --resume" if last else
                                  "no checkpoint was written yet")
                               + "; lower data.workers or give the job more memory if it recurs") from None
        path = _save(task, optimizer, scaler, step, recipe, ckpt_dir, info, plan)
        raise ConvsslError(f"{why} at step {step} (killed, e.g. by the out-of-memory killer?); checkpoint saved to "
                           f"{path}: continue with --resume; lower data.workers or give the job more memory if it "
                           "recurs") from None


def _agree(finite: torch.Tensor, stop_requested: bool) -> tuple[bool, bool]:
    """``(apply this step, stop after it)``, the same on every rank: a NaN on any rank
    skips the step everywhere, and a signal to any rank stops all at the same step."""
    flags = torch.stack([(~finite).to(torch.int32),
                         torch.tensor(int(stop_requested), dtype=torch.int32, device=finite.device)])
    if cdist.is_enabled():
        tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
    bad, stop_now = flags.tolist()
    return not bad, bool(stop_now)


def _log(window, step, lr, wd, plan, info, log, bar, skipped: int = 0) -> dict:
    now = time.perf_counter()
    elapsed = now - window["t"]
    n = max(1, window["n"])  # steps in the window that were applied (skipped ones are not averaged)
    names = sorted(window["sums"])  # one stacked all-reduce and one device read for every key
    means = cdist.all_reduce_mean(torch.stack([window["sums"][k] for k in names]) / n).tolist() if names else []
    scalars = dict(zip(names, means))
    if skipped:
        scalars["skipped_steps"] = float(skipped)
    img_s = n * plan.global_batch / max(elapsed, 1e-9)
    share = window["wait"] / max(elapsed, 1e-9)
    if log:
        log.scalars(step, {**scalars, "lr": lr, "wd": wd, "epoch": step / plan.steps_per_epoch,
                           "img_per_s": img_s, "data_wait": share})
    bar.update(step, {k: v for k, v in scalars.items() if k in ("loss", "acc")}, img_s, share)
    window.update(n=0, t=now, wait=0.0, sums={})
    return scalars


def _monitor(spec: str | None, recipe: Recipe, info):
    """The main rank's online monitor over labeled shards ``spec`` (None: off)."""
    if spec is None or not info.is_main:
        return None
    from convssl.train.monitor import Monitor

    return Monitor(spec, recipe.data, seed=recipe.train.seed)


def _save(task, optimizer, scaler, step, recipe, ckpt_dir, info, plan) -> Path:
    """A checkpoint of this step, written atomically by the main rank; never one holding
    NaN or infinite weights (raised instead, naming the last good checkpoint)."""
    bad = ckpt_io.non_finite(task.state_dict())
    if _any_rank(bool(bad), next(task.parameters()).device):
        last = ckpt_io.latest(ckpt_dir)
        raise ConvsslError(
            f"the weights became NaN or infinite by step {step} "
            + (f"({len(bad)} tensor(s), e.g. {bad[0]}); " if bad else "(on another rank); ")
            + "no checkpoint was written. "
            + (f"The last good checkpoint is {last}; " if last else "")
            + "lower optim.lr_per_256, set optim.clip_grad (e.g. 3.0) or use train.precision=fp32, then "
            + ("--resume" if last else "start again"))
    rng = all_ranks_rng_state(info)
    path = ckpt_io.step_path(ckpt_dir, step)
    if info.is_main:
        encoder = task.export_encoder()
        _save_or_explain({
            "format": ckpt_io.FORMAT,
            "step": step,
            "epoch": step / plan.steps_per_epoch,
            "data": {"per_rank_batches": step, "per_rank_batch": plan.per_rank_batch,
                     "world_size": info.world_size},
            "config": recipe.to_dict(),
            "budget": plan.budget,
            "init": encoder.init_source,
            "encoder": {k: v.detach().cpu() for k, v in encoder.backbone_state_dict().items()},
            "task": task.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng,
            "versions": versions(),
        }, path, step)
        _prune(ckpt_dir, recipe.train.keep_checkpoints)
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


def _buffer_sync(every_forward: bool) -> dict:
    """DDP's argument for syncing buffers every forward, as this torch spells it: newer
    torch deprecates ``broadcast_buffers`` (a FutureWarning on every rank) for
    ``forward_sync_buffers``, which still syncs once at construction: harmless here,
    since every rank builds the task from the same seed or loads the same checkpoint."""
    import inspect

    if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters:
        return {"forward_sync_buffers": every_forward}
    return {"broadcast_buffers": every_forward}


def _any_rank(flag: bool, device: torch.device) -> bool:
    if not cdist.is_enabled():
        return flag
    t = torch.tensor(int(flag), dtype=torch.int32, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t)


def _prune(ckpt_dir: Path, keep: int) -> None:
    found = sorted(ckpt_dir.glob("step-*.pt"))
    for old in found[: max(0, len(found) - max(1, keep))]:
        old.unlink()


def _claim_run_dir(run_dir: Path, resume: bool | str, info) -> tuple[RunLock | None, dict | None]:
    """Rank 0 locks the run directory and decides where the run starts (which checkpoint,
    or none); every rank then gets that one decision, so under torchrun all ranks continue
    the same step, or all stop with the same message, however the folder changes meanwhile.
    Returns the lock (rank 0) and the state to resume (None: a fresh start)."""
    ckpt_dir = run_dir / "checkpoints"
    lock, state = None, None
    if info.is_main:
        try:
            lock = RunLock(run_dir, "--out", note=lambda message: _warn(info, message)).acquire()
            clean_stale_temps(ckpt_dir)  # left by a process killed while writing a checkpoint
            state = _resume_state(run_dir, resume)
        except ConvsslError as exc:
            if lock is not None:
                lock.release()
            cdist.broadcast_object({"error": str(exc)})
            raise
        cdist.broadcast_object({"checkpoint": state["path"] if state else None})
        return lock, state
    decision = cdist.broadcast_object(None)
    if "error" in decision:
        raise ConvsslError(decision["error"])
    return None, ckpt_io.load(decision["checkpoint"]) if decision["checkpoint"] else None


def _resume_state(run_dir: Path, resume: bool | str) -> dict | None:
    """The checkpoint to continue (None: start), refused up front when it cannot be."""
    ckpt_dir = run_dir / "checkpoints"
    path = ckpt_io.latest(ckpt_dir)
    if not resume:
        if path is not None:
            raise ConvsslError(f"{str(run_dir)!r} already holds checkpoints; pass --resume to continue that run "
                               "(--resume auto: continue if there is a checkpoint, else start), or choose another --out")
        return None
    if path is None:
        if resume == "auto":
            return None
        raise ConvsslError(f"--resume: no checkpoint in {str(ckpt_dir)!r}; start without --resume "
                           "(or with --resume auto, which starts when there is none)")
    state = ckpt_io.load(path)
    optimizer_tensors = {f"optimizer.{i}.{name}": v for i, s in state.get("optimizer", {}).get("state", {}).items()
                         for name, v in s.items()}
    earlier = sorted(ckpt_dir.glob("step-*.pt"))[:-1]
    ckpt_io.require_finite(
        {**state.get("task", {}), **optimizer_tensors}, path, "it cannot be continued: "
        + (f"delete it to resume from the one before ({earlier[-1]})" if earlier else "start again")
        + ", with a lower optim.lr_per_256, optim.clip_grad set or train.precision=fp32", kind="values")
    return state


def _merge_resumed_recipe(state: dict, recipe: Recipe, info) -> Recipe:
    saved = recipe_from_dict(state["config"])
    mine, theirs = _flat(recipe.to_dict()), _flat(saved.to_dict())
    changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    refused = [k for k in changed if k not in RESUMABLE_CHANGES | REMEDY_CHANGES]
    if refused:
        raise ConfigError(
            "--resume with a recipe that differs from the checkpoint's in: "
            + ", ".join(f"{k} ({theirs.get(k)!r} -> {mine.get(k)!r})" for k in refused[:8])
            + f". Only {', '.join(sorted(RESUMABLE_CHANGES | REMEDY_CHANGES))} may change on resume."
        )
    remedies = [k for k in changed if k in REMEDY_CHANGES]
    if remedies:
        _warn(info, "--resume changes " + ", ".join(f"{k} ({theirs.get(k)!r} -> {mine.get(k)!r})" for k in remedies)
              + f"; training continues from step {state['step']} with the new value(s), so from here on it "
              "is not the run the checkpoint started")
    return recipe


def _restore_rng(state: dict, info, seed: int) -> None:
    """Each rank continues its own random stream. A checkpoint written by another number of
    processes has no stream for this rank: every rank is then seeded from (seed, step,
    rank), so ranks never share one stream."""
    rng, saved_world = state["rng"], state["data"].get("world_size", 1)
    streams = rng if isinstance(rng, list) else [rng]
    if saved_world == info.world_size and len(streams) == info.world_size:
        set_rng_state(streams[info.rank])
        return
    torch.manual_seed(hash((seed, state["step"], info.rank)) % 2**63)
    step, g = state["step"], state["data"]["per_rank_batch"] * saved_world
    _warn(info, f"resuming a checkpoint written by {saved_world} process(es) with {info.world_size}: weights, "
          f"optimizer, schedule and step {step} continue exactly, and so does the data position in samples "
          f"({step * g} read, epoch {state.get('epoch', 0):.2f}), but shards are dealt per process, so the rest of "
          "this epoch reads the samples in another order (some twice, some not) and the random streams (crops, "
          f"masks, augmentations) are re-seeded per rank: the run is not bit-identical to one on {saved_world}")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key != "encoder.kwargs":
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _warn_about_plan(recipe: Recipe, plan: Plan, info) -> None:
    if plan.warmup_steps > plan.total_steps:
        reached = plan.total_steps / plan.warmup_steps
        _warn(info, f"optim.warmup_epochs {recipe.optim.warmup_epochs:g} is {plan.warmup_steps} steps, longer "
              f"than the whole run ({plan.total_steps} steps): the learning rate never gets past "
              f"{reached:.0%} of its peak {plan.peak_lr:.3g}; shorten optim.warmup_epochs")


def _note(info, message: str) -> None:
    """A note for the user (no warning): one line on stdout, from the main rank."""
    if info.is_main:
        print(f"convssl pretrain: {message}", flush=True)


def _warn(info, message: str) -> None:
    """A warning the user must see: one line on stderr, from the main rank."""
    if info.is_main:
        print(f"convssl pretrain: warning: {message}", file=sys.stderr, flush=True)


def _resolve(spec: str):
    from convssl.data.urls import resolve_shards

    return resolve_shards(spec)


def _shard_batches(recipe: Recipe, urls, manifest, info, plan, start_batches: int, transform):
    """The rank's infinite loader; ``transform`` is the task's ``loader_transform()``, run
    per sample in the workers; ``start_batches`` resumes the data position."""
    from convssl.data.reader import ShardDataset, make_loader

    d = recipe.data
    dataset = ShardDataset(
        urls, transform=transform, channels=d.channels, labeled=False,
        shuffle_buffer=d.shuffle_buffer, seed=recipe.train.seed, rank=info.rank,
        world_size=info.world_size, infinite=True, start_batches=start_batches,
        batch_size=plan.per_rank_batch, max_corrupt_fraction=d.max_corrupt_fraction, manifest=manifest,
    )
    return make_loader(dataset, batch_size=plan.per_rank_batch, num_workers=d.workers)


def _to_device(batch: dict, dev: torch.device, channels_last: bool) -> dict:
    def move(x):
        if torch.is_tensor(x):
            x = x.to(dev, non_blocking=True)
            return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
        if isinstance(x, (list, tuple)) and x and torch.is_tensor(x[0]):
            return [move(v) for v in x]
        return x
    return {k: move(v) for k, v in batch.items()}


def _write_config(run_dir: Path, recipe: Recipe, data: str, info, plan: Plan, init: dict | None = None) -> None:
    doc = recipe.to_dict()
    doc["run"] = {"data": data, "world_size": info.world_size, "global_batch": plan.global_batch,
                  "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
                  "peak_lr": plan.peak_lr, "num_samples": plan.num_samples, **versions()}
    if plan.budget:
        doc["run"]["budget"] = plan.budget
    if init:  # the starting weights: source, file read, sha256
        doc["run"]["init"] = init
    (run_dir / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

