"""Full fine-tuning of a pretrained encoder with a fresh linear head, on a label subset.

The loop reads top to bottom: batch -> normalise -> encoder + head -> cross-entropy ->
backward -> clip -> step -> log -> evaluate -> checkpoint. Layer-wise lr decay over the
encoder's stages, linear warm-up then cosine; random resized crop + flip in the loader
workers. ``init="random"`` runs exactly the same from a random-init encoder (seeded): the
baseline that says what the pretraining was worth.

One process, or one per device under ``torchrun`` (DDP: NCCL on GPU, gloo on CPU): the
global batch is split over ranks, the rank-0 process writes the run directory. A run
resumes exactly (model, optimizer, scaler, step, every rank's RNG state and data
position), and its checkpoints hold ``config`` (the pretraining recipe) and ``encoder``
(the fine-tuned backbone under the original model's keys), so ``convssl export`` and
``convssl probe`` take them like pretraining checkpoints.

Legend: B per-rank batch, C channels, H/W input size, K classes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.nn as nn
import torch.nn.functional as F
import yaml

from convssl import dist as cdist
from convssl.config import to_dict
from convssl.views.crops import RandomResizedCrop
from convssl.views.normalize import normalize
from convssl.data.reader import ShardDataset, make_loader
from convssl.data.urls import resolve_shards
from convssl.encoders import Encoder, build_encoder
from convssl.errors import ConfigError, ConvsslError, DataError
from convssl.run_lock import locks_out_dir
from convssl.eval import label_subset
from convssl.eval.bootstrap import LEVEL, RESAMPLES, SEED, accuracy_intervals
from convssl.eval.correctness import ENCODING, labels_fingerprint, pack_bits
from convssl.eval.features import labeled_batches
from convssl.eval.finetune_config import RESUMABLE_CHANGES, FinetuneConfig
from convssl.eval.finetune_report import write_report
from convssl.checkpoint.input_spec import input_spec
from convssl.checkpoint.versions import versions
from convssl.eval.layer_decay import layer_decay_groups
from convssl import checkpoint as ckpt_io
from convssl.train.optim import optimizer_for_groups
from convssl.train.progress import Progress
from convssl.train.run_log import RunLog
from convssl.train.schedule import warmup_cosine
from convssl.train.interrupt import StopRequest
from convssl.train.precision import autocast_dtype
from convssl.train.state import all_ranks_rng_state, seed_all, set_rng_state
from convssl.workers import stop_workers

FORMAT = "convssl-finetune/1"
INITS = ("pretrained", "random")


class Classifier(nn.Module):
    """An encoder and a fresh linear head on its globally pooled last stage.

    The head starts at weights N(0, 0.01^2) and bias 0 (as the linear classifiers of
    Goyal et al. 2019), so the first steps barely disturb the pretrained features.
    """

    def __init__(self, encoder: Encoder, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.pool(x_BCHW))


class TrainView:
    """The worker-side training transform: one random resized crop, maybe flipped.

    The one place that knows the reader's transform contract (the returned dict is
    merged into the sample); ``_images`` is its other half, on the batch side.
    """

    def __init__(self, size: int, cfg: FinetuneConfig):
        self.crop = RandomResizedCrop(size, scale=cfg.scale, ratio=cfg.ratio, flip=cfg.flip)

    def __call__(self, img_CHW: torch.Tensor, generator: torch.Generator) -> dict:
        return {"img": self.crop(img_CHW, generator)}


def _images(batch: dict) -> torch.Tensor:
    """The uint8 [B, C, H, W] crops of a batch made with ``TrainView``."""
    img = batch["img"]
    return img[0] if isinstance(img, (list, tuple)) else img


@dataclass
class Plan:
    """Sizes derived once from the config, the label subset and the world size."""

    global_batch: int
    per_rank_batch: int
    num_samples: int
    total_steps: int
    warmup_steps: int
    peak_lr: float


def make_plan(cfg: FinetuneConfig, num_samples: int, world_size: int) -> Plan:
    g = cfg.batch_size
    if g % world_size:
        raise ConfigError(f"batch_size {g} is not divisible by the {world_size} processes; use a multiple of {world_size}")
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * num_samples / g))
    return Plan(global_batch=g, per_rank_batch=g // world_size, num_samples=num_samples, total_steps=total,
                warmup_steps=round(cfg.warmup * total), peak_lr=cfg.lr_per_256 * g / 256)


@locks_out_dir("out")  # one run per run directory, as pretrain
def finetune(ckpt: str | Path, train: str, val: str, out: str | Path, cfg: FinetuneConfig, *,
             init: str = "pretrained", labels: str | Path | None = None, resume: bool = False,
             device: str | None = None, progress: bool = True, stop_after: int | None = None,
             trust: tuple[str, ...] | list[str] = ()) -> dict:
    """Fine-tune the encoder of checkpoint ``ckpt`` on labeled shards ``train``, evaluate
    top-1 on ``val``; the run directory ``out`` gets ``config.yaml``, ``labels/`` (the
    subset), ``metrics.jsonl``, ``checkpoints/``, ``report.json`` and ``report.md``.

    ``init="random"`` fine-tunes the same architecture from random init instead.
    ``labels`` is the folder of a subset written by an earlier run (the baseline reuses the
    pretrained run's); default ``out/labels``, chosen and written when missing.
    ``stop_after`` ends this call after that many steps with a checkpoint (the schedule
    unchanged); ``resume=True`` continues the latest checkpoint in ``out``.
    ``trust``: user-code encoder specs ``ckpt`` may name (``checkpoint.encoder_config``).
    Returns ``{"finished": bool}``; on rank 0 of a finished run, with the report's keys
    (top-1 as fractions in [0, 1]).
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

    encoder, source = _encoder(ckpt, init, cfg.seed, trust)
    spec = input_spec(source, encoder)
    size, channels, mean, std = spec.size, spec.channels, list(spec.mean), list(spec.std)

    labels_dir = Path(labels) if labels is not None else run_dir / "labels"
    record = _label_subset(train, labels_dir, cfg, info)
    train_spec = str(labels_dir) if record["copied"] else record["source"]
    num_classes = int(record["num_classes"])

    torch.manual_seed(cfg.seed + 1)  # the same fresh head for the pretrained run and its baseline
    model = Classifier(encoder, num_classes)
    if info.enabled and dev.type == "cuda" and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # state_dict keys stay the same
    model.to(dev)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    plan = make_plan(cfg, int(record["count"]), info.world_size)
    groups = layer_decay_groups(encoder, model.head, weight_decay=cfg.weight_decay, decay=cfg.layer_decay)
    optimizer = optimizer_for_groups(groups, cfg.optim(), plan.peak_lr)
    amp_dtype = autocast_dtype(cfg.precision, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype is torch.float16)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step = state["step"]

    urls, manifest = resolve_shards(train_spec)
    dataset = ShardDataset(urls, transform=TrainView(size, cfg), channels=channels, labeled=True,
                           shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed, rank=info.rank,
                           world_size=info.world_size, infinite=True, start_batches=step,
                           batch_size=plan.per_rank_batch, manifest=manifest)
    loader = make_loader(dataset, plan.per_rank_batch, cfg.workers)
    # RNG last: starting the loader draws a base seed, which must not shift a resumed run.
    batches = iter(loader)
    torch.manual_seed(cfg.seed * 1009 + info.rank)
    if state is not None:
        set_rng_state(state["rng"][info.rank] if isinstance(state["rng"], list) else state["rng"])

    net = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    run = {"init": init, "source": source, "train": str(train), "train_read": train_spec, "val": str(val),
           "labels": str(labels_dir), "size": size, "channels": channels, "mean": mean, "std": std,
           "num_classes": num_classes, "plan": plan.__dict__, "world_size": info.world_size}
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        doc = {"finetune": to_dict(cfg), "run": {**run, "source": _source_summary(source)},
               "versions": versions()}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    log = RunLog(run_dir) if info.is_main else None
    bar = Progress(plan.total_steps, step, enabled=progress and info.is_main)
    end = plan.total_steps if stop_after is None else min(plan.total_steps, step + stop_after)
    history = list(state.get("finetune", {}).get("history", [])) if state else []
    try:
        step = _loop(net, model, optimizer, scaler, amp_dtype, batches, cfg, plan, info, dev, step, end,
                     ckpt_dir, log, bar, run, history, source)
    finally:
        stop_workers(batches)
        bar.close()
        if log:
            log.close()

    report = {"finished": step >= plan.total_steps}
    if report["finished"] and info.is_main:
        final = _evaluate(model, run, cfg)  # again after a resume at the end: the per-image correctness is not saved
        if not history or history[-1]["step"] != step:
            history.append({"step": step, **_scalars(final)})
        report = _report(cfg, run, plan, final, history, record, time.perf_counter() - started, dev)
        write_report(report, run_dir)
        report["finished"] = True
    cdist.barrier()
    return report


# -- the loop ---------------------------------------------------------------------------

def _loop(net, model, optimizer, scaler, amp_dtype, batches, cfg, plan, info, dev, step, end, ckpt_dir,
          log, bar, run, history, source) -> int:
    final_lr = plan.peak_lr * cfg.min_lr_ratio
    trainable = [p for p in model.parameters() if p.requires_grad]
    window = {"n": 0, "t": time.perf_counter(), "wait": 0.0, "loss": 0.0, "acc": 0.0}
    with StopRequest() as stop:
        while step < end:
            t0 = time.perf_counter()
            batch = next(batches)
            x_BCHW = normalize(_images(batch).to(dev, non_blocking=True), run["mean"], run["std"])
            if cfg.channels_last:
                x_BCHW = x_BCHW.contiguous(memory_format=torch.channels_last)
            cls_B = batch["cls"].to(dev, non_blocking=True)
            window["wait"] += time.perf_counter() - t0

            lr = warmup_cosine(step, plan.total_steps, plan.peak_lr, plan.warmup_steps, final_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]

            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits_BK = net(x_BCHW)
            loss = F.cross_entropy(logits_BK.float(), cls_B, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss.detach()):  # before the step: the weights stay those of step - 1
                raise ConvsslError(f"the fine-tuning loss became {loss.item()} at step {step + 1}; lower "
                                   "lr_per_256 (--set lr_per_256=...) or set clip_grad, then start again")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1

            window["n"] += 1
            window["loss"] += loss.detach().float()
            window["acc"] += (logits_BK.detach().argmax(1) == cls_B).float().mean()
            if step % max(1, cfg.log_every) == 0 or step == end:
                _log(window, step, lr, plan, log, bar)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < plan.total_steps:
                if info.is_main:
                    history.append({"step": step, **_scalars(_evaluate(model, run, cfg))})
                    log.scalars(step, {f"val_{k}": v for k, v in history[-1].items() if k in ("top1", "loss")})
                cdist.barrier()
            stop_now = _agree(stop.requested)  # the same decision on every rank
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == end or stop_now:
                path = _save(model, optimizer, scaler, step, cfg, run, history, source, ckpt_dir, info)
            if stop_now and step < end:
                raise ConvsslError(f"stopped by a signal at step {step}; checkpoint saved to {path}; "
                                   "continue with the same command plus --resume")
    return step


def _agree(flag: bool) -> bool:
    """True on every rank when it is True on any (a signal may reach only some ranks)."""
    if not cdist.is_enabled():
        return flag
    t = torch.tensor([int(flag)])
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def _log(window, step, lr, plan, log, bar) -> None:
    now = time.perf_counter()
    elapsed = max(now - window["t"], 1e-9)
    scalars = {k: float(cdist.all_reduce_mean(window[k] / window["n"])) for k in ("loss", "acc")}
    img_s, share = window["n"] * plan.global_batch / elapsed, window["wait"] / elapsed
    if log:
        log.scalars(step, {**scalars, "lr": lr, "img_per_s": img_s, "data_wait": share})
    bar.update(step, scalars, img_s, share)
    window.update(n=0, t=now, wait=0.0, loss=0.0, acc=0.0)


@torch.no_grad()
def _evaluate(model: Classifier, run: dict, cfg: FinetuneConfig) -> dict:
    """Top-1 and mean cross-entropy on the validation shards (eval view, eval mode).

    Runs under a forked RNG: the loader it starts must not move the training stream.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = seen = 0
    loss_sum = 0.0
    hits, labels = [], []
    per_class_hit = torch.zeros(run["num_classes"], dtype=torch.int64)
    per_class_all = torch.zeros(run["num_classes"], dtype=torch.int64)
    try:
        with torch.random.fork_rng(devices=[]), labeled_batches(run["val"], run["size"], run["channels"],
                                                                 max(cfg.batch_size, 64), cfg.workers) as batches:
            for img_BCHW, cls_B in batches:
                if int(cls_B.max()) >= run["num_classes"]:
                    raise DataError(f"the validation shards hold class {int(cls_B.max())}, but the training "
                                    f"labels have {run['num_classes']} classes; use shards with the same classes")
                x = normalize(img_BCHW.to(device), run["mean"], run["std"])
                logits_BK = model(x).float().cpu()
                loss_sum += float(F.cross_entropy(logits_BK, cls_B, reduction="sum"))
                hit_B = logits_BK.argmax(1) == cls_B
                hits.append(hit_B)
                labels.append(cls_B)
                correct += int(hit_B.sum())
                seen += len(cls_B)
                per_class_all += torch.bincount(cls_B, minlength=run["num_classes"])
                per_class_hit += torch.bincount(cls_B[hit_B], minlength=run["num_classes"])
    finally:
        model.train(was_training)
    if seen == 0:
        raise DataError(f"the validation shards {run['val']!r} hold no samples")
    per_class = [float(h) / float(a) if a else None for h, a in zip(per_class_hit, per_class_all)]
    return {"top1": correct / seen, "loss": loss_sum / seen, "count": seen, "per_class_top1": per_class,
            "correct": torch.cat(hits), "labels": torch.cat(labels)}


def _scalars(result: dict) -> dict:
    """An evaluation without its per-image tensors (what the history and checkpoints keep)."""
    return {k: v for k, v in result.items() if k not in ("correct", "labels")}


# -- state ------------------------------------------------------------------------------

def _encoder(ckpt, init: str, seed: int, trust) -> tuple[Encoder, dict]:
    """The encoder to fine-tune (pretrained weights, or random init seeded by ``seed``)
    and its source checkpoint (for the recipe: architecture, input size, normalisation)."""
    if init == "pretrained":
        seed_all(seed)
        return ckpt_io.load_encoder(ckpt, trust)
    source = ckpt_io.load(ckpt)
    enc_cfg = ckpt_io.encoder_config(source, trust)
    seed_all(seed)
    return build_encoder(enc_cfg), source


def _label_subset(train: str, labels_dir: Path, cfg: FinetuneConfig, info) -> dict:
    """The run's label subset: read when saved, else chosen (rank 0) and saved."""
    if not (labels_dir / "labels.json").is_file():
        if info.is_main:
            index = label_subset.index_labels(train)
            chosen = label_subset.choose_subset(index.keys, index.labels, cfg.label_fraction, cfg.label_seed)
            label_subset.write_subset(index, chosen, labels_dir, fraction=cfg.label_fraction,
                                      seed=cfg.label_seed, copy_samples=cfg.label_fraction < 1)
        cdist.barrier()
    record = label_subset.read_subset(labels_dir)
    if record["fraction"] != cfg.label_fraction or record["seed"] != cfg.label_seed:
        raise ConfigError(f"{labels_dir} holds a subset of fraction {record['fraction']} (seed {record['seed']}), "
                          f"not {cfg.label_fraction} (seed {cfg.label_seed}); use another --out")
    return record


def _save(model, optimizer, scaler, step, cfg, run, history, source, ckpt_dir, info) -> Path:
    rng = all_ranks_rng_state(info)
    path = ckpt_io.step_path(ckpt_dir, step)
    if info.is_main:
        ckpt_io.save_atomic({
            "format": ckpt_io.FORMAT,
            "step": step,
            "data": {"per_rank_batches": step, "per_rank_batch": run["plan"]["per_rank_batch"],
                     "world_size": info.world_size},
            # The pretraining recipe: export and probe rebuild the encoder from it.
            "config": source["config"],
            "encoder": {k: v.detach().cpu() for k, v in model.encoder.backbone_state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng,
            "finetune": {"format": FORMAT, "config": to_dict(cfg), "init": run["init"],
                         "source": _source_summary(source), "num_classes": run["num_classes"],
                         "labels": run["labels"], "history": history},
            "versions": versions(),
        }, path)
        found = sorted(ckpt_dir.glob("step-*.pt"))
        for old in found[: max(0, len(found) - max(1, cfg.keep_checkpoints))]:
            old.unlink()
    cdist.barrier()
    return path


def _check_resumed_config(state: dict, cfg: FinetuneConfig, init: str) -> None:
    saved = state.get("finetune")
    if not saved:
        raise ConvsslError(f"{state['path']} is not a fine-tuning checkpoint; choose another --out")
    if saved["init"] != init:
        raise ConfigError(f"--resume: the run fine-tunes from {saved['init']} init, not {init}")
    mine, theirs = to_dict(cfg), saved["config"]
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
        "seed": cfg.seed,
        "data": {"train": run["train"], "val": run["val"], "size": run["size"], "channels": run["channels"],
                 "mean": run["mean"], "std": run["std"]},
        "labels": {k: record[k] for k in ("fraction", "seed", "count", "of", "per_class")} | {"path": run["labels"]},
        "counts": {"train": plan.num_samples, "val": final["count"], "classes": num_classes},
        "chance": 1.0 / num_classes,
        "protocol": {
            "head": "fresh linear head on the globally pooled last stage",
            "optimizer": cfg.optimizer, "peak_lr": plan.peak_lr, "lr_per_256": cfg.lr_per_256,
            "layer_decay": cfg.layer_decay, "weight_decay": cfg.weight_decay,
            "schedule": f"linear warm-up {plan.warmup_steps} steps, cosine to {cfg.min_lr_ratio} x peak",
            "steps": plan.total_steps, "global_batch": plan.global_batch,
            "epochs_over_subset": plan.total_steps * plan.global_batch / plan.num_samples,
            "augmentation": f"random resized crop scale {list(cfg.scale)}, ratio {[round(r, 4) for r in cfg.ratio]}"
                            + (", horizontal flip" if cfg.flip else ""),
            "label_smoothing": cfg.label_smoothing,
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

