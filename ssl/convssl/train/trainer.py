"""Pretraining: the run set up around the training loop (``convssl.train.loop``).

One process, or one per device under ``torchrun`` (DDP: NCCL on GPU, gloo on CPU). The
global batch ``data.batch_size`` is split over ranks (``convssl.train.plan``). Here the run
directory is claimed and the start decided (``convssl.train.resume``), the task, its
optimizer and the loader are built, a ``train.budget`` is timed (``convssl.train.budget``),
and the loop runs with the callbacks the command hands over (the online monitor).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as tdist

from convssl import dist as cdist
from convssl.encoders import build_encoder
from convssl.encoders.init_weights import apply_init
from convssl.errors import ConfigError
from convssl.input_memory import check_input_fits
from convssl.recipe import Recipe
from convssl.tasks.registry import build_task
from convssl.train import budget as budget_fit
from convssl.train.batches import shard_batches, to_device
from convssl.train.callbacks import Callback
from convssl.train.checkpointer import Checkpointer
from convssl.train.finite import StepGuard
from convssl.train.loop import train
from convssl.train.messages import note, warn
from convssl.train.optim import build_optimizer
from convssl.train.plan import Plan, make_plan, warn_about_plan
from convssl.train.precision import autocast_dtype
from convssl.train.progress import Progress
from convssl.train.resume import claim_run_dir, merge_resumed_recipe, restore_rng, restore_training_state
from convssl.train.run_config import write_config
from convssl.train.run_log import RunLog
from convssl.train.state import seed_all
from convssl.train.step import LoopState
from convssl.workers import stop_workers

def pretrain(recipe: Recipe, data: str, out: str | Path, *, resume: bool | str = False,
             device: str | None = None, batches=None, progress: bool = True,
             stop_after: int | None = None, callbacks: Callback | list[Callback] | tuple = ()) -> dict:
    """Pretrain ``recipe`` on shards ``data`` into run directory ``out``.

    ``batches`` (an iterator of batch dicts) replaces the shard loader; tests use it to
    give every world size the same global batches. ``stop_after`` ends this invocation
    after that many steps with a checkpoint, the schedule unchanged (time-limited jobs
    continue with ``resume=True``). ``callbacks`` (one or a list, ``convssl.train.callbacks``)
    run after every step, e.g. the online monitor (``convssl.eval.monitor.MonitorCallback``).
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
    # Everything that can be wrong with the user's input is checked before the model is
    # built and before any loader worker starts: the run dir, the data, the sizes.
    urls, manifest = (None, None) if batches is not None else _resolve(data)
    lock, state = claim_run_dir(run_dir, resume, info)
    callbacks = [callbacks] if hasattr(callbacks, "on_step") else list(callbacks)
    try:
        return _pretrain_claimed(recipe, data, run_dir, state, urls, manifest, info, dev, batches=batches,
                                 progress=progress, stop_after=stop_after, callbacks=callbacks)
    finally:
        if lock is not None:
            lock.release()


def _pretrain_claimed(recipe: Recipe, data: str, run_dir: Path, state: dict | None, urls, manifest, info,
                      dev: torch.device, *, batches, progress: bool, stop_after: int | None,
                      callbacks: list[Callback]) -> dict:
    """``pretrain`` once rank 0 holds the run directory and the start is decided."""
    if state is not None:
        recipe = merge_resumed_recipe(state, budget_fit.resumed(recipe, state), info)
    fitting = budget_fit.needs_fitting(recipe, state)  # the step count is decided after timed steps
    if state is None and recipe.train.budget and not fitting:
        warn(info, f"train.budget {recipe.train.budget} with train.max_steps {recipe.train.max_steps}: the steps are "
              "given (as a budget run's config.yaml records them), not timed; --budget (or train.max_steps=0) times them")
    plan = make_plan(recipe, manifest, info.world_size)
    if state is not None and state.get("budget"):
        plan.budget = state["budget"]
    if not fitting:
        warn_about_plan(recipe.optim, plan, info)
    check_input_fits(plan.per_rank_batch, recipe.data.channels, recipe.data.size, dev,
                     names="data.size or data.batch_size")

    seed_all(recipe.train.seed)
    encoder = build_encoder(recipe.encoder)
    if state is None:  # starting weights (encoder.init); a resumed run has its own
        apply_init(encoder, recipe.encoder.init, note=lambda message: note(info, message))
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
    step = 0 if state is None else restore_training_state(state, task, "task", optimizer, scaler)

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
    bar = Progress(plan.total_steps, step, enabled=progress and info.is_main)
    try:
        if batches is None:
            batches = shard_batches(urls, manifest, recipe.data, channels=recipe.data.channels,
                                    seed=recipe.train.seed, info=info, per_rank_batch=plan.per_rank_batch,
                                    start_batches=step, transform=task.loader_transform())
        # Workers start here; from now on every exit path goes through ``finally``.
        # RNG last: starting the loader (iter draws a base seed) must not shift the random
        # stream of a resumed run against the uninterrupted one.
        batches = iter(batches)
        torch.manual_seed(recipe.train.seed * 1009 + info.rank)
        if state is not None:
            restore_rng(state, info, recipe.train.seed)
        feed = batches
        if fitting:  # time real steps, fix train.max_steps, undo them (convssl.train.budget)
            recipe, plan, feed = budget_fit.fit(
                recipe, lambda r: make_plan(r, manifest, info.world_size), batches, model=model, task=task,
                optimizer=optimizer, scaler=scaler, amp_dtype=amp_dtype, device=dev, info=info,
                to_device=lambda b: to_device(b, dev, recipe.train.channels_last))
            if recipe.optim != optimizer_settings:  # the recipe's optim.short_budget (convssl.short_budget)
                optimizer = build_optimizer(task, recipe.optim, plan.peak_lr)
            warn_about_plan(recipe.optim, plan, info)
            bar.total, bar.t0 = plan.total_steps, time.perf_counter()
        if info.is_main:
            write_config(run_dir, recipe, data, info, plan, init=encoder.init_source)
        end = plan.total_steps if stop_after is None else min(plan.total_steps, step + stop_after)
        loop = LoopState(model=model, task=task, optimizer=optimizer, scaler=scaler, device=dev, amp_dtype=amp_dtype,
                         clip_grad=recipe.optim.clip_grad, total_steps=plan.total_steps, step=step,
                         guard=StepGuard(task, recipe.train.max_bad_steps))
        checkpointer = Checkpointer(run_dir / "checkpoints", task, info, every=recipe.train.ckpt_every,
                                    keep=recipe.train.keep_checkpoints, contents=_contents(recipe, loop, plan, info))
        summary = train(loop, feed, plan=plan, optim=recipe.optim, train_cfg=recipe.train, end=end,
                        to_device=lambda b: to_device(b, dev, recipe.train.channels_last), checkpointer=checkpointer,
                        log=log, bar=bar, callbacks=callbacks, is_main=info.is_main)
    finally:
        stop_workers(batches)
        bar.close()
        if log:
            log.close()
    if info.enabled and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()
    return summary


def _contents(recipe: Recipe, loop: LoopState, plan: Plan, info):
    """What a pretraining checkpoint holds besides the step, the RNG states and the
    versions (the format: ``convssl.checkpoint.files``)."""
    def contents(step: int) -> dict:
        encoder = loop.task.export_encoder()
        return {
            "epoch": step / plan.steps_per_epoch,
            "data": {"per_rank_batches": step, "per_rank_batch": plan.per_rank_batch, "world_size": info.world_size},
            "config": recipe.to_dict(),
            "budget": plan.budget,
            "init": encoder.init_source,
            "encoder": {k: v.detach().cpu() for k, v in encoder.backbone_state_dict().items()},
            "task": loop.task.state_dict(),
            "optimizer": loop.optimizer.state_dict(),
            "scaler": loop.scaler.state_dict(),
        }
    return contents


def _buffer_sync(every_forward: bool) -> dict:
    """DDP's argument for syncing buffers every forward, as this torch spells it: newer
    torch deprecates ``broadcast_buffers`` (a FutureWarning on every rank) for
    ``forward_sync_buffers``, which still syncs once at construction: harmless here,
    since every rank builds the task from the same seed or loads the same checkpoint."""
    import inspect

    if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters:
        return {"forward_sync_buffers": every_forward}
    return {"broadcast_buffers": every_forward}


def _resolve(spec: str):
    from convssl.data.urls import resolve_shards

    return resolve_shards(spec)


