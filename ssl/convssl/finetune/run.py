"""Full fine-tuning of a pretrained encoder with a fresh linear head, on a label subset.

The classifier task (``convssl.finetune.classifier``) runs in the training loop as a
pretext task does (``convssl.train.loop``: batch -> encoder + head -> cross-entropy ->
backward -> clip -> step -> log -> evaluate -> checkpoint), with layer-wise lr decay over
the encoder's stages, linear warm-up then cosine, and a random resized crop + flip cut in
the loader workers. ``init="random"`` runs exactly the same from a random-init encoder
(seeded): the baseline that says what the pretraining was worth.

One process, or one per device under ``torchrun`` (DDP: NCCL on GPU, gloo on CPU): the
global batch is split over ranks, the rank-0 process writes the run directory. A run
resumes exactly (model, optimizer, scaler, step, every rank's RNG state and data
position), and its checkpoints hold ``config`` (the pretraining recipe) and ``encoder``
(the fine-tuned backbone under the original model's keys), so ``convssl export`` and
``convssl probe`` take them like pretraining checkpoints.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from convssl import checkpoint as ckpt_io
from convssl import dist as cdist
from convssl.checkpoint.versions import versions
from convssl.config import to_dict
from convssl.data.urls import resolve_shards
from convssl.encoders import Encoder, build_encoder
from convssl.encoders.from_checkpoint import encoder_config, load_encoder
from convssl.encoders.input_spec import input_spec
from convssl.errors import ConfigError, ConvsslError
from convssl.eval import label_subset
from convssl.eval.bootstrap import LEVEL, RESAMPLES, SEED, accuracy_intervals
from convssl.eval.correctness import ENCODING, labels_fingerprint, pack_bits
from convssl.eval.layer_decay import layer_decay_groups
from convssl.finetune.classifier import Classifier
from convssl.finetune.config import RESUMABLE_CHANGES, FinetuneRecipe
from convssl.finetune.evaluation import EvalCallback, evaluate, scalars
from convssl.finetune.report import write_report
from convssl.run_lock import locks_out_dir
from convssl.train.batches import shard_batches, to_device
from convssl.train.checkpointer import Checkpointer
from convssl.train.finite import StepGuard
from convssl.train.loop import train as train_loop
from convssl.train.optim import optimizer_for_groups
from convssl.train.plan import plan_run, warn_about_plan
from convssl.train.precision import autocast_dtype
from convssl.train.progress import Progress
from convssl.train.resume import flat_keys, restore_rng, restore_training_state
from convssl.train.run_log import RunLog
from convssl.train.state import seed_all
from convssl.train.step import LoopState
from convssl.views.crops import RandomResizedCrop
from convssl.workers import stop_workers

FORMAT = "convssl-finetune/1"
INITS = ("pretrained", "random")


@locks_out_dir("out")  # one run per run directory, as pretrain
def finetune(ckpt: str | Path, train: str, val: str, out: str | Path, cfg: FinetuneRecipe, *,
             init: str = "pretrained", labels: str | Path | None = None, resume: bool = False,
             device: str | None = None, progress: bool = True, stop_after: int | None = None,
             trust: tuple[str, ...] | list[str] = ()) -> dict:
    """Fine-tune the encoder of checkpoint ``ckpt`` on labeled shards ``train``, evaluate
    top-1 on ``val``; the run directory ``out`` gets ``config.yaml``, ``labels/`` (the
    subset), ``metrics.jsonl``, ``checkpoints/``, ``report.json`` and ``report.md``.

    ``cfg``: a ``FinetuneRecipe`` (``convssl.finetune.config``). ``init="random"``
    fine-tunes the same architecture from random init instead. ``labels`` is the folder of
    a subset written by an earlier run (the baseline reuses the pretrained run's); default
    ``out/labels``, chosen and written when missing. ``stop_after`` ends this call after
    that many steps with a checkpoint (the schedule unchanged); ``resume=True`` continues
    the latest checkpoint in ``out``. ``trust``: user-code encoder specs ``ckpt`` may name
    (``convssl.encoders.from_checkpoint.encoder_config``). Returns ``{"finished": bool}``; on rank 0 of a
    finished run, with the report's keys (top-1 as fractions in [0, 1]).
    """
    if init not in INITS:
        raise ConfigError(f"init must be one of {', '.join(INITS)}, not {init!r}")
    dev = cdist.training_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    info = cdist.init(dev)
    run_dir, started = Path(out), time.perf_counter()
    ckpt_dir = run_dir / "checkpoints"
    state = None
    if resume:
        found = ckpt_io.latest(ckpt_dir)
        if found is None:
            raise ConvsslError(f"--resume: no checkpoint in {str(ckpt_dir)!r}; start without --resume")
        state = ckpt_io.load(found)
        _check_resumed_config(state, cfg, init)
    elif ckpt_io.latest(ckpt_dir) is not None:
        raise ConvsslError(f"{str(run_dir)!r} already holds checkpoints; pass --resume to continue that run, "
                           "or choose another --out")

    seed = cfg.train.seed
    encoder, source = _encoder(ckpt, init, seed, trust)
    spec = input_spec(source, encoder)
    size, channels, mean, std = spec.size, spec.channels, list(spec.mean), list(spec.std)

    labels_dir = Path(labels) if labels is not None else run_dir / "labels"
    record = _label_subset(train, labels_dir, cfg, info)
    train_spec = str(labels_dir) if record["copied"] else record["source"]
    num_classes = int(record["num_classes"])

    torch.manual_seed(seed + 1)  # the same fresh head for the pretrained run and its baseline
    d = cfg.data
    model = Classifier(encoder, num_classes, mean=mean, std=std, label_smoothing=cfg.task.label_smoothing,
                       crop=RandomResizedCrop(size, scale=d.scale, ratio=d.ratio, flip=d.flip))
    if info.enabled and dev.type == "cuda" and cfg.train.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # state_dict keys stay the same
    model.to(dev)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    plan = plan_run(d.batch_size, int(record["count"]), cfg.train, cfg.optim, info.world_size)
    warn_about_plan(cfg.optim, plan, info, "finetune")
    groups = layer_decay_groups(encoder, model.head, weight_decay=cfg.optim.weight_decay, decay=cfg.task.layer_decay)
    optimizer = optimizer_for_groups(groups, cfg.optim, plan.peak_lr)
    amp_dtype = autocast_dtype(cfg.train.precision, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype is torch.float16)
    step = 0 if state is None else restore_training_state(state, model, "model", optimizer, scaler)

    urls, manifest = resolve_shards(train_spec)
    loader = shard_batches(urls, manifest, d, channels=channels, seed=seed, info=info,
                           per_rank_batch=plan.per_rank_batch, start_batches=step,
                           transform=model.loader_transform(), labeled=True)
    # RNG last: starting the loader draws a base seed, which must not shift a resumed run.
    batches = iter(loader)
    torch.manual_seed(seed * 1009 + info.rank)
    if state is not None:
        restore_rng(state, info, seed)

    net = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net)
    run = {"init": init, "source": source, "train": str(train), "train_read": train_spec, "val": str(val),
           "labels": str(labels_dir), "size": size, "channels": channels, "mean": mean, "std": std,
           "num_classes": num_classes, "plan": plan.__dict__, "world_size": info.world_size}
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        doc = {"finetune": to_dict(cfg), "run": {**run, "source": _source_summary(source)}, "versions": versions()}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    log = RunLog(run_dir) if info.is_main else None
    bar = Progress(plan.total_steps, step, enabled=progress and info.is_main)
    end = plan.total_steps if stop_after is None else min(plan.total_steps, step + stop_after)
    history = list(state.get("finetune", {}).get("history", [])) if state else []
    loop = LoopState(model=net, task=model, optimizer=optimizer, scaler=scaler, device=dev, amp_dtype=amp_dtype,
                     clip_grad=cfg.optim.clip_grad, total_steps=plan.total_steps, step=step,
                     guard=StepGuard(model, cfg.train.max_bad_steps))
    checkpointer = Checkpointer(ckpt_dir, model, info, every=cfg.train.ckpt_every, keep=cfg.train.keep_checkpoints,
                                contents=_contents(loop, cfg, run, history, source, info))
    scoring = EvalCallback(model, run, every=cfg.eval.every, batch_size=d.batch_size, workers=d.workers,
                           history=history, is_main=info.is_main)
    try:
        train_loop(loop, batches, plan=plan, optim=cfg.optim, train_cfg=cfg.train, end=end,
                   to_device=lambda b: to_device(b, dev, cfg.train.channels_last), checkpointer=checkpointer,
                   log=log, bar=bar, callbacks=[scoring], is_main=info.is_main)
    finally:
        stop_workers(batches)
        bar.close()
        if log:
            log.close()

    step = loop.step
    report = {"finished": step >= plan.total_steps}
    if report["finished"] and info.is_main:
        # scored again after a resume at the end: the per-image correctness is not saved
        final = evaluate(model, run, d.batch_size, d.workers)
        if not history or history[-1]["step"] != step:
            history.append({"step": step, **scalars(final)})
        report = _report(cfg, run, plan, final, history, record, time.perf_counter() - started, dev)
        write_report(report, run_dir)
        report["finished"] = True
    cdist.barrier()
    return report


def _encoder(ckpt, init: str, seed: int, trust) -> tuple[Encoder, dict]:
    """The encoder to fine-tune (pretrained weights, or random init seeded by ``seed``)
    and its source checkpoint (for the recipe: architecture, input size, normalisation)."""
    if init == "pretrained":
        seed_all(seed)
        return load_encoder(ckpt, trust)
    source = ckpt_io.load(ckpt)
    enc_cfg = encoder_config(source, trust)
    seed_all(seed)
    return build_encoder(enc_cfg), source


def _label_subset(train: str, labels_dir: Path, cfg: FinetuneRecipe, info) -> dict:
    """The run's label subset: read when saved, else chosen (rank 0) and saved."""
    if not (labels_dir / "labels.json").is_file():
        if info.is_main:
            index = label_subset.index_labels(train)
            chosen = label_subset.choose_subset(index.keys, index.labels, cfg.data.label_fraction, cfg.data.label_seed)
            label_subset.write_subset(index, chosen, labels_dir, fraction=cfg.data.label_fraction,
                                      seed=cfg.data.label_seed, copy_samples=cfg.data.label_fraction < 1)
        cdist.barrier()
    record = label_subset.read_subset(labels_dir)
    if record["fraction"] != cfg.data.label_fraction or record["seed"] != cfg.data.label_seed:
        raise ConfigError(f"{labels_dir} holds a subset of fraction {record['fraction']} (seed {record['seed']}), "
                          f"not {cfg.data.label_fraction} (seed {cfg.data.label_seed}); use another --out")
    return record


def _contents(loop: LoopState, cfg: FinetuneRecipe, run: dict, history: list, source: dict, info):
    """What a fine-tuning checkpoint holds besides the step, the RNG states and the versions."""
    def contents(step: int) -> dict:
        model = loop.task
        return {
            "data": {"per_rank_batches": step, "per_rank_batch": run["plan"]["per_rank_batch"],
                     "world_size": info.world_size},
            # The pretraining recipe: export and probe rebuild the encoder from it.
            "config": source["config"],
            "encoder": {k: v.detach().cpu() for k, v in model.encoder.backbone_state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
            "model": model.state_dict(),
            "optimizer": loop.optimizer.state_dict(),
            "scaler": loop.scaler.state_dict(),
            "finetune": {"format": FORMAT, "config": to_dict(cfg), "init": run["init"],
                         "source": _source_summary(source), "num_classes": run["num_classes"],
                         "labels": run["labels"], "history": history},
        }
    return contents


def _check_resumed_config(state: dict, cfg: FinetuneRecipe, init: str) -> None:
    saved = state.get("finetune")
    if not saved:
        raise ConvsslError(f"{state['path']} is not a fine-tuning checkpoint; choose another --out")
    if saved["init"] != init:
        raise ConfigError(f"--resume: the run fine-tunes from {saved['init']} init, not {init}")
    mine, theirs = flat_keys(to_dict(cfg)), flat_keys(saved["config"])
    refused = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k) and k not in RESUMABLE_CHANGES)
    if refused:
        raise ConfigError("--resume with settings that differ from the checkpoint's: "
                          + ", ".join(f"{k} ({theirs.get(k)!r} -> {mine.get(k)!r})" for k in refused[:8])
                          + f". Only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume.")


def _source_summary(source: dict) -> dict:
    return {"path": source.get("path"), "step": source.get("step"), "encoder": source["config"].get("encoder"),
            "task": source["config"].get("task")}


def _report(cfg, run, plan, final, history, record, seconds, dev) -> dict:
    source = _source_summary(run["source"])
    num_classes = run["num_classes"]
    return {
        "format": FORMAT,
        "encoder": {"spec": source["encoder"]["spec"], "config": source["encoder"]},
        "init": run["init"],
        "checkpoint": source["path"] if run["init"] == "pretrained" else None,
        "architecture_from": source["path"],
        "step": source["step"] if run["init"] == "pretrained" else None,
        "pretext": (source.get("task") or {}).get("name") if run["init"] == "pretrained" else None,
        "seed": cfg.train.seed,
        "data": {"train": run["train"], "val": run["val"], "size": run["size"], "channels": run["channels"],
                 "mean": run["mean"], "std": run["std"]},
        "labels": {k: record[k] for k in ("fraction", "seed", "count", "of", "per_class")} | {"path": run["labels"]},
        "counts": {"train": plan.num_samples, "val": final["count"], "classes": num_classes},
        "chance": 1.0 / num_classes,
        "protocol": {
            "head": "fresh linear head on the globally pooled last stage",
            "optimizer": cfg.optim.name, "peak_lr": plan.peak_lr, "lr_per_256": cfg.optim.lr_per_256,
            "layer_decay": cfg.task.layer_decay, "weight_decay": cfg.optim.weight_decay,
            "schedule": f"linear warm-up {plan.warmup_steps} steps, cosine to {cfg.optim.min_lr_ratio} x peak",
            "steps": plan.total_steps, "global_batch": plan.global_batch,
            "epochs_over_subset": plan.total_steps * plan.global_batch / plan.num_samples,
            "augmentation": f"random resized crop scale {list(cfg.data.scale)}, ratio {[round(r, 4) for r in cfg.data.ratio]}"
                            + (", horizontal flip" if cfg.data.flip else ""),
            "label_smoothing": cfg.task.label_smoothing,
            "eval": "whole image (size <= 64) or resize + centre crop, eval-mode BatchNorm",
            "units": "accuracies are top-1 fractions in [0, 1]",
        },
        "config": to_dict(cfg),
        "top1": final["top1"],
        "top1_ci": accuracy_intervals(final["correct"])[0].as_list(),
        "bootstrap": {"resamples": RESAMPLES, "seed": SEED, "level": LEVEL,
                      "method": "percentile interval over val images resampled with replacement (Efron & "
                                "Tibshirani 1993, ch. 13)"},
        "heldout": {"count": len(final["correct"]), "labels_sha256": labels_fingerprint(final["labels"]),
                    "correct_encoding": ENCODING},
        "correct": pack_bits(final["correct"]),
        "val_loss": final["loss"],
        "per_class_top1": final["per_class_top1"],
        "history": [{k: h[k] for k in ("step", "top1", "loss")} for h in history],
        "seconds": round(seconds, 3),
        "device": str(dev),
        "world_size": run["world_size"],
        "versions": versions(),
    }
