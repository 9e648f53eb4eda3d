"""Online monitoring during pretraining: a linear probe, a kNN score and a collapse check.

Every ``train.monitor_every`` steps (``convssl pretrain --monitor SHARDS``; a training-loop
callback, ``MonitorCallback``, that the command hands to ``pretrain``) the encoder's
globally pooled last-stage features of a fixed labeled sample (read once, the first
``samples`` images of the monitor shards, split 80% fit / 20% scored at random with a
fixed seed) are taken
in eval mode without gradients, then:

- an online linear probe, as solo-learn's online classifier: a linear layer on detached
  (here: computed under ``no_grad``) features with its own optimizer, kept and trained
  further at each check (``probe_epochs`` passes of Adam), scored on the held-out part.
  It never sends gradients into the encoder: its inputs have no graph, and it is not part
  of the task, the optimizer or the checkpoint (it starts afresh on resume);
- a weighted kNN top-1, k = 20, cosine similarity, temperature 0.07 (Wu et al. 2018;
  DINO, Caron et al. 2021);
- a collapse check: ``feat_std``, the mean per-dimension standard deviation of the
  L2-normalised features times sqrt(D) (SimSiam, Chen and He 2021, sec. 4.1: about 1 for
  features spread like a Gaussian, 0 when every image maps to one point), and
  ``eff_rank``, the effective rank of the centred features (Roy and Vetterli 2007:
  exp of the entropy of the normalised singular values; RankMe, Garrido et al. 2023).
  Collapse is flagged when ``feat_std < COLLAPSE_STD`` or ``eff_rank < COLLAPSE_RANK``;
- the kNN top-1's 95% bootstrap interval over the held-out part and its paired gain over
  the same architecture at random init (seeded; its kNN computed once, at the first
  check), as ``convssl probe --baseline random`` reports them (``convssl.eval.bootstrap``);
  ``summary`` is the last check's line, e.g. ``kNN@20 71.0 [64.5, 77.0] on 200 images,
  +6.0 [+1.5, +10.5] over random init: pays``.

Nothing here draws from torch's global random stream (the probe starts at zero, batches
are shuffled by a generator of its own), so a run with monitoring trains exactly as one
without.

Legend: N samples, D feature dims, K classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from convssl.views.normalize import normalize
from convssl import dist as cdist
from convssl.errors import DataError
from convssl.eval.features import labeled_batches
from convssl.eval.bootstrap import accuracy_intervals, paired_differences
from convssl.eval.knn import knn_correct
from convssl.eval.verdict import classify, format_difference, format_interval
from convssl.train.callbacks import due

KNN_K, KNN_T = 20, 0.07
COLLAPSE_STD = 0.01    # normalised std x sqrt(D): 0 collapsed; random convnets give 0.08 (BN) to 0.2 (GN)
COLLAPSE_RANK = 1.5    # a collapsed encoder's centred features have rank ~0 (constant) to ~1 (a line)


def effective_rank(feats_ND: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred features (Roy and
    Vetterli 2007); 0 when they are all zero (every sample the same)."""
    centred = feats_ND.double() - feats_ND.double().mean(0, keepdim=True)
    s = torch.linalg.svdvals(centred)
    total = s.sum()
    if total <= 1e-12 * max(1.0, float(feats_ND.abs().max())) * len(s):
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def normalized_std(feats_ND: torch.Tensor) -> float:
    """Mean per-dimension std of the L2-normalised features, times sqrt(D) (SimSiam)."""
    z = F.normalize(feats_ND.double(), dim=1)
    return float(z.std(0).mean() * math.sqrt(z.shape[1]))


class Monitor:
    """Online probe, kNN and collapse check of an encoder on a fixed labeled sample.

    ``evaluate(encoder)`` -> {"monitor/probe_top1", "monitor/knn_top1", "monitor/feat_std",
    "monitor/eff_rank", "monitor/collapsed"}; ``note`` is the progress line's warning.
    """

    def __init__(self, spec: str, data, *, samples: int = 1000, probe_epochs: int = 5,
                 lr: float = 1e-2, batch_size: int = 256, seed: int = 0):
        imgs, labels = [], []
        count = 0
        with labeled_batches(spec, data.size, data.channels, batch_size, 0) as batches:
            for img_BCHW, cls_B in batches:
                imgs.append(img_BCHW)
                labels.append(cls_B)
                count += len(cls_B)
                if count >= samples:
                    break
        if count < 10:
            raise DataError(f"--monitor {spec!r}: need at least 10 labeled samples, found {count}")
        # a fixed random split: shards written class by class must not hold out whole classes
        order = torch.randperm(min(count, samples), generator=torch.Generator().manual_seed(seed))
        self.img_NCHW = torch.cat(imgs)[:samples][order]
        self.y_N = torch.cat(labels)[:samples][order]
        self.n_fit = max(1, int(0.8 * len(self.y_N)))
        self.num_classes = int(self.y_N.max()) + 1
        self.mean, self.std = data.mean, data.std
        self.probe_epochs, self.lr, self.batch_size = probe_epochs, lr, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.probe: torch.nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.note = ""
        self.summary = ""  # the last check's kNN with its interval and its gain over random init
        self.seed = seed
        self.random_init_correct: torch.Tensor | None = None

    @torch.no_grad()
    def features(self, encoder) -> torch.Tensor:
        """Pooled last-stage features ``[N, D]`` (float32, CPU), encoder in eval mode."""
        device = next(encoder.parameters()).device
        was_training = encoder.training
        encoder.eval()
        try:
            out = []
            for img in self.img_NCHW.split(self.batch_size):
                x = normalize(img.to(device), self.mean, self.std)
                out.append(encoder.pool(x).float().flatten(1).cpu())
        finally:
            encoder.train(was_training)
        return torch.cat(out)

    def evaluate(self, encoder) -> dict[str, float]:
        feats_ND = self.features(encoder)
        fit, held = feats_ND[: self.n_fit], feats_ND[self.n_fit:]
        y_fit, y_held = self.y_N[: self.n_fit], self.y_N[self.n_fit:]
        if len(held) == 0:
            held, y_held = fit, y_fit
        correct = self._knn_correct(feats_ND)
        knn = float(correct.double().mean())
        probe = self._train_probe(fit, y_fit, held, y_held)
        feat_std, rank = normalized_std(feats_ND), effective_rank(feats_ND)
        collapsed = feat_std < COLLAPSE_STD or rank < COLLAPSE_RANK
        self.note = f"COLLAPSE? feat_std {feat_std:.3f} eff_rank {rank:.2f}" if collapsed else ""
        scores = {"monitor/probe_top1": probe, "monitor/knn_top1": knn, "monitor/feat_std": feat_std,
                  "monitor/eff_rank": rank, "monitor/collapsed": float(collapsed)}
        return scores | self._intervals(encoder, correct)

    def _knn_correct(self, feats_ND: torch.Tensor) -> torch.Tensor:
        """Per held-out image: does the kNN over the fit part get it right (bool)."""
        fit, held = feats_ND[: self.n_fit], feats_ND[self.n_fit:]
        y_fit, y_held = self.y_N[: self.n_fit], self.y_N[self.n_fit:]
        if len(held) == 0:
            held, y_held = fit, y_fit
        return knn_correct(fit, y_fit, held, y_held, ks=(KNN_K,), temperature=KNN_T,
                           num_classes=self.num_classes)[KNN_K]

    def _intervals(self, encoder, correct: torch.Tensor) -> dict[str, float]:
        """The kNN's 95% interval and, when the encoder's architecture is known, its paired gain
        over random init; sets ``summary``."""
        from convssl.eval.baselines import random_init

        (iv,) = accuracy_intervals(correct, seed=self.seed)
        out = {"monitor/knn_low": iv.low, "monitor/knn_high": iv.high}
        self.summary = f"kNN@{KNN_K} {format_interval(iv)} on {len(correct)} images"
        if self.random_init_correct is None and getattr(encoder, "config", None) is not None:
            baseline = random_init(encoder.config, self.seed).to(next(encoder.parameters()).device)
            self.random_init_correct = self._knn_correct(self.features(baseline))
        if self.random_init_correct is not None:
            (gain,) = paired_differences(correct, self.random_init_correct, seed=self.seed)
            out |= {"monitor/knn_gain": gain.value, "monitor/knn_gain_low": gain.low,
                    "monitor/knn_gain_high": gain.high}
            self.summary += f", {format_difference(gain)} over random init: {classify(gain)}"
        return out

    def _train_probe(self, fit_ND, y_fit, held_ND, y_held) -> float:
        """Continue training the online linear probe on standardised features; held-out top-1."""
        mu, sd = fit_ND.mean(0), fit_ND.std(0).clamp_min(1e-6)
        fit_ND, held_ND = (fit_ND - mu) / sd, (held_ND - mu) / sd
        if self.probe is None or self.probe.in_features != fit_ND.shape[1]:
            with torch.random.fork_rng(devices=[]):  # Linear's default init draws; ours is zero
                self.probe = torch.nn.Linear(fit_ND.shape[1], self.num_classes)
            torch.nn.init.zeros_(self.probe.weight)
            torch.nn.init.zeros_(self.probe.bias)
            self.optimizer = torch.optim.Adam(self.probe.parameters(), lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.probe_epochs):
                order = torch.randperm(len(fit_ND), generator=self.generator)
                for idx in order.split(self.batch_size):
                    loss = F.cross_entropy(self.probe(fit_ND[idx]), y_fit[idx])
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
        with torch.no_grad():
            return float((self.probe(held_ND).argmax(1) == y_held).float().mean())


class MonitorCallback:
    """The online monitor as a training-loop callback (``convssl.train.callbacks``): on the
    main rank, every ``every`` steps and at the run's last step, it scores the task's
    encoder (``Monitor.evaluate``); the run's summary gets its last verdict line."""

    def __init__(self, spec: str, data, *, every: int, seed: int = 0, **monitor_kwargs):
        # read on the main rank only, before training starts: bad shards fail first
        self.monitor = Monitor(spec, data, seed=seed, **monitor_kwargs) if cdist.from_env().is_main else None
        self.every = every
        self.note: str | None = None

    def on_step(self, step: int, total_steps: int, task) -> dict[str, float]:
        if self.monitor is None or not due(step, self.every, total_steps):
            return {}
        scores = self.monitor.evaluate(task.export_encoder())
        self.note = self.monitor.note
        return scores

    def on_end(self) -> dict:
        """``{"monitor": the last check's line}``: kNN with its interval, gain over random init, verdict."""
        return {"monitor": self.monitor.summary or None} if self.monitor is not None else {}


def monitor_callbacks(spec: str | None, recipe) -> list[MonitorCallback]:
    """The callbacks ``pretrain`` gets for ``--monitor SPEC`` (none without it)."""
    if spec is None:
        return []
    return [MonitorCallback(spec, recipe.data, every=recipe.train.monitor_every, seed=recipe.train.seed)]
