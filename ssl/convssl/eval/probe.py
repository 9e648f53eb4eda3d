"""Probe a frozen encoder on labeled shards: per-stage linear top-1 (primary) and kNN.

Linear comes first because kNN is misleading for pretext tasks (rotation 11.9 kNN vs
47.0 linear on ImageNet, REFERENCES.md); every stage is probed because the last
stages of a pretext-trained net specialise to the pretext task (Gidaris et al. 2018:
block 2 beats block 4 by 27 points).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from convssl.config import to_dict
from convssl.encoders import Encoder
from convssl.errors import ConfigError, ConvsslError, DataError
from convssl.eval import bootstrap, verdict
from convssl.eval import knn as knn_mod
from convssl.eval import linear
from convssl.eval.baselines import Baseline
from convssl.eval.correctness import ENCODING, labels_fingerprint, pack_bits
from convssl.eval.features import MAX_DIMS, features_of_shards
from convssl.eval.report import write_report
from convssl.eval.status_line import StatusLine
from convssl.checkpoint.versions import versions
from convssl.writable import ensure_writable_dir

FORMAT = "convssl-probe/1"
METRICS = ("linear", "knn20", "knn200")  # per-image correctness kept for each
_TOP1_KEY = {"linear": "linear_top1", "knn20": "knn20", "knn200": "knn200"}


def probe(encoder: Encoder, train_spec: str, val_spec: str, *, size: int, channels: int, mean, std,
          out_dir: str | Path, batch_size: int = 256, workers: int = 2, knn: bool = True,
          max_dims: int | None = MAX_DIMS, checkpoint: str | None = None, step: int | None = None,
          seed: int | None = None, status: StatusLine | None = None,
          patch_grid: int = 1, baselines: Sequence[Baseline] = (), resamples: int = bootstrap.RESAMPLES,
          bootstrap_seed: int = bootstrap.SEED) -> dict:
    """Extract frozen features of ``train_spec`` and ``val_spec``, fit the probes per stage,
    write ``report.json``, ``report.md`` and ``stages.png`` into ``out_dir``.

    The encoder runs on the device of its parameters; the probes are fitted there too.
    ``checkpoint``, ``step`` and ``seed`` (for a random-init encoder) are recorded in
    the report. ``status`` shows progress (feature pass img/s and ETA, the stage being
    fitted). ``patch_grid`` n > 1 averages each stage's features over n x n patches of
    every image (Kolesnikov et al. 2019) instead of encoding whole images.

    Every top-1 gets a 95% percentile interval from ``resamples`` bootstrap resamples of
    the val images (seeded by ``bootstrap_seed``; ``bootstrap``), and the per-image
    correctness of every metric is stored (``correctness``). Each of ``baselines`` (see
    ``baselines.build_baseline``) is probed with the same protocol on the same images;
    the report then holds, per baseline and stage, the paired difference of every metric
    with its interval and a verdict line on linear top-1 (``verdict``).
    Returns the report dict (accuracies are top-1 fractions in [0, 1]).
    """
    ensure_writable_dir(out_dir, "out_dir")  # fail now, not after the features
    if resamples < 1000:
        raise ConfigError(f"--resamples {resamples}: percentile intervals need at least 1000 resamples")
    started = time.perf_counter()
    device = next(encoder.parameters()).device
    read = dict(train_spec=train_spec, val_spec=val_spec, size=size, channels=channels, mean=mean, std=std,
                batch_size=batch_size, workers=workers, max_dims=max_dims, status=status, patch_grid=patch_grid,
                knn=knn, device=device)
    seconds = {"features": 0.0, "linear": 0.0, "knn": 0.0}
    names = ["probed encoder"] + [b.spec.label for b in baselines]
    main = _evaluate(encoder, names, 0, started, seconds, **read)
    evals = [main]
    for i, b in enumerate(baselines, 1):
        evals.append(_evaluate(b.encoder.to(device), names, i, started, seconds, num_classes=main["classes"], **read))
        if not torch.equal(evals[-1]["val_labels"], main["val_labels"]):
            raise DataError(f"the val shards {val_spec!r} were read in another order for the baseline "
                            f"{b.spec.text}; a paired comparison needs the same images in the same order")
    t0 = time.perf_counter()
    n_val = len(main["val_labels"])
    stage_names = [row["name"] for row in main["stages"]]
    for b, ev in zip(baselines, evals[1:]):
        if [row["name"] for row in ev["stages"]] != stage_names:
            raise ConvsslError(f"baseline {b.spec.text} has stages {[r['name'] for r in ev['stages']]}, "
                               f"not the probed encoder's {stage_names}")
    metrics = [m for m in METRICS if m == "linear" or knn]
    columns = [(e, s, m) for e in range(len(evals)) for s in range(len(stage_names)) for m in metrics]
    correct_NV = torch.stack([evals[e]["stages"][s]["correct"][m] for e, s, m in columns], dim=1)
    samples_RV = bootstrap.bootstrap_means(correct_NV, resamples=resamples, seed=bootstrap_seed)
    point_V = correct_NV.double().mean(0)
    col = {c: v for v, c in enumerate(columns)}
    for e, ev in enumerate(evals):
        for s, row in enumerate(ev["stages"]):
            for m in metrics:
                v = col[(e, s, m)]
                row[f"{m}_ci"] = bootstrap.percentile_interval(samples_RV[:, v], float(point_V[v])).as_list()
            row["correct"] = {m: pack_bits(row["correct"][m]) for m in metrics}
    compared = []
    for e, (b, ev) in enumerate(zip(baselines, evals[1:]), 1):
        differences = []
        for s, name in enumerate(stage_names):
            diff = {}
            for m in metrics:
                a, z = col[(0, s, m)], col[(e, s, m)]
                diff[m] = bootstrap.percentile_interval(samples_RV[:, a] - samples_RV[:, z],
                                                        float(point_V[a] - point_V[z]))
            differences.append({"stage": name, **{m: asdict(iv) for m, iv in diff.items()},
                                "verdict": verdict.classify(diff["linear"]),
                                "line": verdict.verdict_line(name, diff["linear"], b.spec.label, n_val)})
        compared.append({"spec": b.spec.text, "label": b.spec.label, "source": b.source, "stages": ev["stages"],
                         "differences": differences})
    seconds["bootstrap"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    if status is not None:
        status.close()

    config = encoder.config
    report = {
        "format": FORMAT,
        "encoder": {"spec": config.spec if config else type(encoder.model).__name__,
                    "config": to_dict(config) if config else None},
        "checkpoint": str(checkpoint) if checkpoint else None,
        "step": step,
        "seed": seed,
        "data": {"train": str(train_spec), "val": str(val_spec), "size": size, "channels": channels,
                 "mean": list(mean), "std": list(std)},
        "counts": {"train": main["train_count"], "val": n_val, "classes": main["classes"]},
        "chance": 1.0 / main["classes"],
        "protocol": {"features": f"per-stage average pooling to <= {max_dims} dims, eval mode"
                                 + (f", averaged over {patch_grid}x{patch_grid} patches per image" if patch_grid > 1 else ""),
                     "patch_grid": patch_grid,
                     "linear": "standardized, L-BFGS multinomial logistic regression, mean CE + wd/2 ||W||^2; "
                               f"every wd fitted from zero for {linear.SEARCH_ITER} iterations in one batched solve, "
                               f"the final fit warm-started from the chosen wd's, <= {linear.MAX_ITER} iterations",
                     "wd_grid": list(linear.WD_GRID), "heldout": linear.HELDOUT,
                     "knn_ks": list(knn_mod.KS) if knn else [], "knn_temperature": knn_mod.TEMPERATURE,
                     "units": "accuracies are top-1 fractions in [0, 1]"},
        "bootstrap": {"resamples": resamples, "seed": bootstrap_seed, "level": bootstrap.LEVEL,
                      "method": "percentile interval over val images resampled with replacement (Efron & "
                                "Tibshirani 1993, ch. 13); differences paired on the same resamples",
                      "fields": "<metric>_ci = [low, high] per stage; differences per baseline and stage"},
        "heldout": {"count": n_val, "labels_sha256": labels_fingerprint(main["val_labels"]),
                    "correct_encoding": ENCODING},
        "stages": main["stages"],
        "baselines": compared,
        "verdicts": [d["line"] for c in compared for d in c["differences"]],
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "device": str(device),
        "versions": versions(),
    }
    write_report(report, out_dir)
    return report


def _evaluate(encoder: Encoder, names: list[str], index: int, started: float, seconds: dict, *, train_spec: str,
              val_spec: str, size: int, channels: int, mean, std, batch_size: int, workers: int,
              max_dims: int | None, status: StatusLine | None, patch_grid: int, knn: bool, device: torch.device,
              num_classes: int | None = None) -> dict:
    """One encoder through the protocol: features, then per stage the linear probe and kNN
    with each val image's correctness (``row["correct"][metric]``, bool tensors)."""
    who = f"{names[index]} ({index + 1}/{len(names)}): " if len(names) > 1 else ""
    t0 = time.perf_counter()
    read = dict(size=size, channels=channels, mean=mean, std=std, batch_size=batch_size, workers=workers,
                max_dims=max_dims, status=status, patch_grid=patch_grid)
    train = features_of_shards(encoder, train_spec, label=f"{who}train features", **read)
    val = features_of_shards(encoder, val_spec, label=f"{who}val features", **read)
    seconds["features"] += time.perf_counter() - t0
    if num_classes is None:
        num_classes = int(max(train.labels_N.max(), val.labels_N.max())) + 1
    if len(train) < 2:
        raise DataError(f"the training shards {train_spec!r} hold {len(train)} sample(s); a probe needs more")

    stages = []
    for i, (tr, va) in enumerate(zip(train.stages, val.stages)):
        if status is not None:
            status.show(f"{who}stage {i + 1}/{len(train.stages)} ({tr.name}, {tr.dims} dims): linear probe"
                        f"{' + kNN' if knn else ''}, {time.perf_counter() - started:.0f} s so far", force=True)
        row = {"name": tr.name, "channels": tr.channels, "reduction": tr.reduction, "grid": tr.grid, "dims": tr.dims}
        t0 = time.perf_counter()
        fit = linear.linear_probe(tr.feats_ND, train.labels_N, va.feats_ND, val.labels_N,
                                  num_classes=num_classes, device=device)
        seconds["linear"] += time.perf_counter() - t0
        row |= {"linear_top1": fit["top1"], "linear_wd": fit["wd"], "linear_train_top1": fit["train_top1"],
                "linear_heldout": fit["heldout"]}
        correct = {"linear": fit["correct"]}
        if knn:
            t0 = time.perf_counter()
            hits = knn_mod.knn_correct(tr.feats_ND, train.labels_N, va.feats_ND, val.labels_N,
                                       num_classes=num_classes, device=device)
            seconds["knn"] += time.perf_counter() - t0
            row |= {f"knn{k}": c.double().mean().item() for k, c in hits.items()}
            correct |= {f"knn{k}": c for k, c in hits.items()}
        else:
            row |= {f"knn{k}": None for k in knn_mod.KS}
        row["correct"] = correct
        stages.append(row)
    return {"stages": stages, "train_count": len(train), "val_labels": val.labels_N, "classes": num_classes}


def checkpoint_input(path: str | Path, trust: tuple[str, ...] | list[str] = ()) -> tuple[Encoder, dict]:
    """The pretrained encoder of a checkpoint and the input its recipe trained on:
    ``{"size", "channels", "mean", "std", "checkpoint", "step"}``. ``trust``: user-code
    encoder specs the caller names (``convssl.encoders.from_checkpoint.encoder_config``)."""
    from convssl.data.config import DataConfig
    from convssl.encoders.from_checkpoint import load_encoder

    encoder, ckpt = load_encoder(path, trust)
    data = ckpt["config"].get("data", {})
    channels = int(data.get("channels", encoder.in_chans))
    defaults = DataConfig()
    mean = data.get("mean") or (defaults.mean if channels == 3 else (sum(defaults.mean) / 3,))
    std = data.get("std") or (defaults.std if channels == 3 else (sum(defaults.std) / 3,))
    return encoder, {"size": int(data.get("size", encoder.input_size)), "channels": channels,
                     "mean": list(mean), "std": list(std), "checkpoint": ckpt["path"], "step": ckpt.get("step")}


def probe_checkpoint(path: str | Path, train_spec: str, val_spec: str, out_dir: str | Path, *,
                     size: int | None = None, device: str | None = None, trust: tuple[str, ...] | list[str] = (),
                     baselines: Sequence[str] = (), **kwargs) -> dict:
    """``probe`` of a checkpoint's encoder at its recipe's input (``size`` overrides it);
    ``trust`` as for ``checkpoint_input``. ``baselines``: ``--baseline`` specs (``random``,
    ``random:SEED``, ``weights:PATH``), each built in the checkpoint's architecture."""
    from convssl.eval.baselines import build_baseline, parse_baseline

    specs = [parse_baseline(b) for b in baselines]  # bad specs fail before the checkpoint is read
    encoder, info = checkpoint_input(path, trust)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    built = [build_baseline(spec, encoder.config) for spec in specs]
    return probe(encoder.to(dev), train_spec, val_spec, size=size or info["size"], channels=info["channels"],
                 mean=info["mean"], std=info["std"], out_dir=out_dir, checkpoint=info["checkpoint"],
                 step=info["step"], baselines=built, **kwargs)
