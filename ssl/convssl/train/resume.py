"""Where a run starts: rank 0 locks the run directory and decides (a fresh start, or the
latest checkpoint, refused up front when it cannot be continued); a resumed recipe may
change only how long and how often, plus the remedies for a diverged run; each rank
continues its own random stream."""

from __future__ import annotations

from pathlib import Path

import torch

from convssl import checkpoint as ckpt_io
from convssl import dist as cdist
from convssl.atomic import clean_stale_temps
from convssl.errors import ConfigError, ConvsslError
from convssl.recipe import Recipe, recipe_from_dict
from convssl.run_lock import RunLock
from convssl.train.messages import warn
from convssl.train.state import set_rng_state

# Keys a resumed run may change (how long and how often); anything else must match.
RESUMABLE_CHANGES = {"train.epochs", "train.max_steps", "train.ckpt_every", "train.log_every",
                     "train.image_every", "train.keep_checkpoints", "train.max_bad_steps", "data.workers",
                     "train.monitor_every"}
# The remedies for a diverged run: they may change on resume, with a warning (the run is
# then no longer the uninterrupted experiment).
REMEDY_CHANGES = {"optim.lr_per_256", "optim.clip_grad", "train.precision"}


def claim_run_dir(run_dir: Path, resume: bool | str, info) -> tuple[RunLock | None, dict | None]:
    """Rank 0 locks the run directory and decides where the run starts (which checkpoint,
    or none); every rank then gets that one decision, so under torchrun all ranks continue
    the same step, or all stop with the same message, however the folder changes meanwhile.
    Returns the lock (rank 0) and the state to resume (None: a fresh start)."""
    ckpt_dir = run_dir / "checkpoints"
    lock, state = None, None
    if info.is_main:
        try:
            lock = RunLock(run_dir, "--out", note=lambda message: warn(info, message)).acquire()
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


def merge_resumed_recipe(state: dict, recipe: Recipe, info) -> Recipe:
    saved = recipe_from_dict(state["config"])
    mine, theirs = flat_keys(recipe.to_dict()), flat_keys(saved.to_dict())
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
        warn(info, "--resume changes " + ", ".join(f"{k} ({theirs.get(k)!r} -> {mine.get(k)!r})" for k in remedies)
              + f"; training continues from step {state['step']} with the new value(s), so from here on it "
              "is not the run the checkpoint started")
    return recipe


def restore_training_state(state: dict, module: torch.nn.Module, module_key: str, optimizer,
                           scaler: torch.amp.GradScaler) -> int:
    """Load a checkpoint's module (under ``module_key``), optimizer and scaler states; the step
    to continue from. The scaler state is empty when the run was saved without fp16."""
    module.load_state_dict(state[module_key])
    optimizer.load_state_dict(state["optimizer"])
    if state["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    return state["step"]


def restore_rng(state: dict, info, seed: int) -> None:
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
    warn(info, f"resuming a checkpoint written by {saved_world} process(es) with {info.world_size}: weights, "
          f"optimizer, schedule and step {step} continue exactly, and so does the data position in samples "
          f"({step * g} read, epoch {state.get('epoch', 0):.2f}), but shards are dealt per process, so the rest of "
          "this epoch reads the samples in another order (some twice, some not) and the random streams (crops, "
          f"masks, augmentations) are re-seeded per rank: the run is not bit-identical to one on {saved_world}")


def flat_keys(d: dict, prefix: str = "") -> dict:
    """``{"a.b": v}`` for the nested ``{"a": {"b": v}}`` (a recipe's keys as ``--set`` names them)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key != "encoder.kwargs":
            out.update(flat_keys(v, key + "."))
        else:
            out[key] = v
    return out
