"""Probe a frozen encoder on labeled shards: per-stage linear top-1 (primary) and kNN.

Linear comes first because kNN is misleading for pretext tasks (rotation 11.9 kNN vs
47.0 linear on ImageNet, REFERENCES.md); every stage is probed because the last
stages of a pretext-trained net specialise to the pretext task (Gidaris et al. 2018:
block 2 beats block 4 by 27 points).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import convssl
from convssl.config import to_dict
from convssl.encoders import Encoder
from convssl.errors import DataError
from convssl.eval import knn as knn_mod
from convssl.eval import linear
from convssl.eval.features import MAX_DIMS, features_of_shards
from convssl.eval.report import write_report
from convssl.eval.status_line import StatusLine
from convssl.writable import ensure_writable_dir

FORMAT = "convssl-probe/1"


def probe(encoder: Encoder, train_spec: str, val_spec: str, *, size: int, channels: int, mean, std,
          out_dir: str | Path, batch_size: int = 256, workers: int = 2, knn: bool = True,
          max_dims: int | None = MAX_DIMS, checkpoint: str | None = None, step: int | None = None,
          seed: int | None = None, status: StatusLine | None = None,
          patch_grid: int = 1) -> dict:
    """Extract frozen features of ``train_spec`` and ``val_spec``, fit the probes per stage,
    write ``report.json``, ``report.md`` and ``stages.png`` into ``out_dir``.

    The encoder runs on the device of its parameters; the probes are fitted there too.
    ``checkpoint``, ``step`` and ``seed`` (for a random-init encoder) are recorded in
    the report. ``status`` shows progress (feature pass img/s and ETA, the stage being
    fitted). ``patch_grid`` n > 1 averages each stage's features over n x n patches of
    every image (Kolesnikov et al. 2019) instead of encoding whole images. Returns the report dict (accuracies are top-1 fractions in [0, 1]).
    """
    ensure_writable_dir(out_dir, "out_dir")  # fail now, not after the features
    started = time.perf_counter()
    device = next(encoder.parameters()).device
    read = dict(size=size, channels=channels, mean=mean, std=std, batch_size=batch_size, workers=workers,
                max_dims=max_dims, status=status, patch_grid=patch_grid)
    train = features_of_shards(encoder, train_spec, label="train features", **read)
    val = features_of_shards(encoder, val_spec, label="val features", **read)
    seconds = {"features": time.perf_counter() - started, "linear": 0.0, "knn": 0.0}
    num_classes = int(max(train.labels_N.max(), val.labels_N.max())) + 1
    if len(train) < 2:
        raise DataError(f"the training shards {train_spec!r} hold {len(train)} sample(s); a probe needs more")

    stages = []
    for index, (tr, va) in enumerate(zip(train.stages, val.stages)):
        if status is not None:
            status.show(f"stage {index + 1}/{len(train.stages)} ({tr.name}, {tr.dims} dims): linear probe"
                        f"{' + kNN' if knn else ''}, {time.perf_counter() - started:.0f} s so far", force=True)
        row = {"name": tr.name, "channels": tr.channels, "reduction": tr.reduction, "grid": tr.grid, "dims": tr.dims}
        t0 = time.perf_counter()
        fit = linear.linear_probe(tr.feats_ND, train.labels_N, va.feats_ND, val.labels_N,
                                  num_classes=num_classes, device=device)
        seconds["linear"] += time.perf_counter() - t0
        row |= {"linear_top1": fit["top1"], "linear_wd": fit["wd"], "linear_train_top1": fit["train_top1"],
                "linear_heldout": fit["heldout"]}
        if knn:
            t0 = time.perf_counter()
            acc = knn_mod.knn_eval(tr.feats_ND, train.labels_N, va.feats_ND, val.labels_N,
                                   num_classes=num_classes, device=device)
            seconds["knn"] += time.perf_counter() - t0
            row |= {f"knn{k}": v for k, v in acc.items()}
        else:
            row |= {f"knn{k}": None for k in knn_mod.KS}
        stages.append(row)
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
        "counts": {"train": len(train), "val": len(val), "classes": num_classes},
        "chance": 1.0 / num_classes,
        "protocol": {"features": f"per-stage average pooling to <= {max_dims} dims, eval mode"
                                 + (f", averaged over {patch_grid}x{patch_grid} patches per image" if patch_grid > 1 else ""),
                     "patch_grid": patch_grid,
                     "linear": "standardized, L-BFGS multinomial logistic regression, mean CE + wd/2 ||W||^2; "
                               f"every wd fitted from zero for {linear.SEARCH_ITER} iterations in one batched solve, "
                               f"the final fit warm-started from the chosen wd's, <= {linear.MAX_ITER} iterations",
                     "wd_grid": list(linear.WD_GRID), "heldout": linear.HELDOUT,
                     "knn_ks": list(knn_mod.KS) if knn else [], "knn_temperature": knn_mod.TEMPERATURE,
                     "units": "accuracies are top-1 fractions in [0, 1]"},
        "stages": stages,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "device": str(device),
        "versions": {"convssl": convssl.__version__, "torch": torch.__version__},
    }
    write_report(report, out_dir)
    return report


def checkpoint_input(path: str | Path, trust: tuple[str, ...] | list[str] = ()) -> tuple[Encoder, dict]:
    """The pretrained encoder of a checkpoint and the input its recipe trained on:
    ``{"size", "channels", "mean", "std", "checkpoint", "step"}``. ``trust``: user-code
    encoder specs the caller names (``convssl.train.checkpoint.encoder_config``)."""
    from convssl.data.config import DataConfig
    from convssl.train.checkpoint import load_encoder

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
                     **kwargs) -> dict:
    """``probe`` of a checkpoint's encoder at its recipe's input (``size`` overrides it);
    ``trust`` as for ``checkpoint_input``."""
    encoder, info = checkpoint_input(path, trust)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return probe(encoder.to(dev), train_spec, val_spec, size=size or info["size"], channels=info["channels"],
                 mean=info["mean"], std=info["std"], out_dir=out_dir, checkpoint=info["checkpoint"],
                 step=info["step"], **kwargs)
