"""Bootstrap intervals for accuracies and paired differences over held-out images.

The nonparametric bootstrap (Efron & Tibshirani 1993, "An Introduction to the
Bootstrap", ch. 6 and 13): resample the held-out images with replacement, recompute the
accuracy on each resample, and take the 2.5th and 97.5th percentiles of those
accuracies as the 95% interval (the percentile interval, ch. 13.3). A paired difference
(ch. 14, two-sample problems on the same units) resamples the *same* images for both
encoders, so what varies is only which images are drawn, never which encoder sees
which: an encoder against itself differs by exactly 0 on every resample.

Vectorised: a resample is a row of counts (how many times each image is drawn), so the
resampled accuracies of V correctness vectors at once are one matrix product
``counts_RN @ correct_NV / N``. Every vector evaluated with the same ``seed`` sees the
same resamples (common random numbers): intervals of one report are computed together,
and a difference of two columns is their paired bootstrap.

Legend: N held-out images, R resamples, V correctness vectors (encoder x stage x metric).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RESAMPLES = 2000  # Efron & Tibshirani (1993, sec. 19.3): >= 1000 for percentile endpoints
LEVEL = 0.95
SEED = 0
_COUNT_BUDGET = 1 << 23  # count-matrix entries per chunk of resamples (32 MB of float32)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval ``[low, high]`` (fractions, not %)."""

    value: float
    low: float
    high: float

    def as_list(self) -> list[float]:
        return [self.low, self.high]

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def resample_counts(n: int, resamples: int, generator: torch.Generator) -> torch.Tensor:
    """``[resamples, n]`` float32: how often each of n items is drawn in each resample
    (n draws with replacement per row, so every row sums to n)."""
    idx_RN = torch.randint(n, (resamples, n), generator=generator)
    return torch.zeros(resamples, n).scatter_add_(1, idx_RN, torch.ones(resamples, n))


def bootstrap_means(values_NV: torch.Tensor, *, resamples: int = RESAMPLES, seed: int = SEED) -> torch.Tensor:
    """Means of every column over ``resamples`` bootstrap resamples of the rows: ``[R, V]`` (float64).

    The resamples depend only on ``(N, resamples, seed)``, never on V or the values, so
    columns bootstrapped in separate calls with the same seed are still paired.
    """
    if values_NV.dim() == 1:
        values_NV = values_NV[:, None]
    n = values_NV.shape[0]
    if n == 0:
        raise ValueError("a bootstrap needs at least one held-out item")
    values_NV = values_NV.to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, min(resamples, _COUNT_BUDGET // n))
    out = []
    for start in range(0, resamples, chunk):
        counts_RN = resample_counts(n, min(chunk, resamples - start), generator)
        out.append(counts_RN.to(torch.float64) @ values_NV / n)
    return torch.cat(out)


def percentile_interval(samples_R: torch.Tensor, value: float, level: float = LEVEL) -> Interval:
    """The percentile interval (Efron & Tibshirani 1993, sec. 13.3) of bootstrap ``samples_R``
    around the point estimate ``value`` computed on the original sample."""
    alpha = (1 - level) / 2
    q = torch.quantile(samples_R.to(torch.float64), torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return Interval(float(value), float(q[0]), float(q[1]))


def accuracy_intervals(correct_NV: torch.Tensor, *, resamples: int = RESAMPLES, seed: int = SEED,
                       level: float = LEVEL) -> list[Interval]:
    """Top-1 and its percentile interval for every column of a bool ``[N, V]`` correctness matrix."""
    if correct_NV.dim() == 1:
        correct_NV = correct_NV[:, None]
    samples_RV = bootstrap_means(correct_NV, resamples=resamples, seed=seed)
    point_V = correct_NV.to(torch.float64).mean(0)
    return [percentile_interval(samples_RV[:, v], float(point_V[v]), level) for v in range(correct_NV.shape[1])]


def paired_differences(correct_NV: torch.Tensor, base_NV: torch.Tensor, *, resamples: int = RESAMPLES,
                       seed: int = SEED, level: float = LEVEL) -> list[Interval]:
    """``top-1(correct) - top-1(base)`` per column with its paired percentile interval.

    Both are bool ``[N, V]`` over the same N held-out images in the same order; each
    resample draws the same images for both (the per-image difference in {-1, 0, 1} is
    what is resampled), so identical vectors give exactly ``[0, 0]``.
    """
    if correct_NV.shape != base_NV.shape:
        raise ValueError(f"paired vectors must have one shape, got {tuple(correct_NV.shape)} and "
                         f"{tuple(base_NV.shape)}")
    if correct_NV.dim() == 1:
        correct_NV, base_NV = correct_NV[:, None], base_NV[:, None]
    diff_NV = correct_NV.to(torch.float64) - base_NV.to(torch.float64)
    samples_RV = bootstrap_means(diff_NV, resamples=resamples, seed=seed)
    point_V = diff_NV.mean(0)
    return [percentile_interval(samples_RV[:, v], float(point_V[v]), level) for v in range(diff_NV.shape[1])]
