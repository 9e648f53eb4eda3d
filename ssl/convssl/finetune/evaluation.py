"""Fine-tuning's evaluation: top-1 and cross-entropy on the validation shards, at the
end and, as a training-loop callback, every ``eval.every`` steps on the main rank (the
scores kept in the run's history, which its checkpoints carry)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convssl import dist as cdist
from convssl.errors import DataError
from convssl.eval.features import labeled_batches
from convssl.finetune.classifier import Classifier


@torch.no_grad()
def evaluate(model: Classifier, run: dict, batch_size: int, workers: int) -> dict:
    """Top-1 and mean cross-entropy on the validation shards (eval view, eval mode), with
    each image's correctness. Runs under a forked RNG: the loader it starts must not move
    the training stream."""
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
                                                                 max(batch_size, 64), workers) as batches:
            for img_BCHW, cls_B in batches:
                if int(cls_B.max()) >= run["num_classes"]:
                    raise DataError(f"the validation shards hold class {int(cls_B.max())}, but the training "
                                    f"labels have {run['num_classes']} classes; use shards with the same classes")
                logits_BK = model.logits(img_BCHW.to(device)).float().cpu()
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


def scalars(result: dict) -> dict:
    """An evaluation without its per-image tensors (what the history and checkpoints keep)."""
    return {k: v for k, v in result.items() if k not in ("correct", "labels")}


class EvalCallback:
    """Scores the classifier every ``every`` steps before the last (the run scores its end
    itself), on the main rank; every rank waits for it. ``history``: the scores so far."""

    note = None

    def __init__(self, model: Classifier, run: dict, *, every: int, batch_size: int, workers: int,
                 history: list[dict], is_main: bool):
        self.model, self.run, self.every = model, run, every
        self.batch_size, self.workers = batch_size, workers
        self.history, self.is_main = history, is_main

    def on_step(self, step: int, total_steps: int, task) -> dict[str, float]:
        if not self.every or step % self.every or step >= total_steps:
            return {}
        logged = {}
        if self.is_main:
            result = evaluate(self.model, self.run, self.batch_size, self.workers)
            self.history.append({"step": step, **scalars(result)})
            logged = {f"val_{k}": v for k, v in self.history[-1].items() if k in ("top1", "loss")}
        cdist.barrier()
        return logged

    def on_end(self) -> dict:
        return {}
