"""Linear probe: multinomial logistic regression on frozen, standardized features.

The protocol of Kornblith et al. (2019, "Do better ImageNet models transfer better?")
and CLIP (Radford et al. 2021, appendix A.3): features extracted once without augmentation,
standardized with the training set's mean and std, a full-batch L-BFGS fit of an
L2-regularised logistic regression whose strength is chosen on a held-out part of the
training set, then a refit on the whole training set with that strength. It agrees
with the costly SGD-with-augmentation probes at small scale (REFERENCES.md) and has
no learning rate or epoch count to tune. Everything is deterministic: zero
initialisation, a seeded split, no sampling.

Objective: mean cross-entropy + wd / 2 * ||W||^2 (the bias is not regularised).

Legend: N samples, D feature dims, K classes, R = min(N, D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WD_GRID = tuple(10.0 ** e for e in range(-6, 2))  # 1e-6 ... 10, log-spaced
HELDOUT = 0.2
SEARCH_ITER = 100  # per grid value, warm-started along the path
MAX_ITER = 300  # the final fit


def standardize(train_ND: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Centre and scale every set with the training set's per-dimension mean and std.

    Dimensions constant on the training set (std ~ 0) become 0, not inf.
    """
    mean_D = train_ND.mean(0)
    std_D = train_ND.std(0, unbiased=False)
    scale_D = torch.where(std_D > 1e-6 * std_D.max().clamp_min(1e-12), std_D, torch.full_like(std_D, torch.inf))
    return [(x - mean_D) / scale_D for x in (train_ND, *others)]


def fit_logistic(x_ND: torch.Tensor, y_N: torch.Tensor, num_classes: int, wd: float, *,
                 max_iter: int = MAX_ITER, tol: float = 1e-6,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean CE(x W + b, y) + wd / 2 ||W||^2 by full-batch L-BFGS.

    Returns ``(W_DK, b_K)`` in ``x_ND``'s dtype and device. ``init`` warm-starts
    (used along a weight-decay path); the default start is zero.
    """
    n, d = x_ND.shape
    W_DK = torch.zeros(d, num_classes, dtype=x_ND.dtype, device=x_ND.device)
    b_K = torch.zeros(num_classes, dtype=x_ND.dtype, device=x_ND.device)
    if init is not None:
        W_DK.copy_(init[0])
        b_K.copy_(init[1])
    W_DK.requires_grad_(True)
    b_K.requires_grad_(True)
    optimizer = torch.optim.LBFGS([W_DK, b_K], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=tol, tolerance_change=1e-12, line_search_fn="strong_wolfe")
    y_N = y_N.to(x_ND.device)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x_ND @ W_DK + b_K, y_N) + 0.5 * wd * W_DK.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return W_DK.detach(), b_K.detach()


def top1(x_ND: torch.Tensor, y_N: torch.Tensor, W_DK: torch.Tensor, b_K: torch.Tensor) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    pred_N = (x_ND @ W_DK + b_K).argmax(1)
    return (pred_N == y_N.to(pred_N.device)).double().mean().item()


def row_space(train_ND: torch.Tensor) -> torch.Tensor | None:
    """An orthonormal basis Q_DR of the training rows' span, when N < D (else None).

    An L2-regularised linear model's optimal W lies in that span (its gradient
    X^T (P - Y) / N + wd W vanishes), so fitting Z on X Q and returning W = Q Z solves
    the same problem exactly, with R = N instead of D unknowns per class.
    """
    n, d = train_ND.shape
    if n >= d:
        return None
    Q_DR, _ = torch.linalg.qr(train_ND.T, mode="reduced")
    return Q_DR


def fit_in_row_space(x_ND: torch.Tensor, y_N: torch.Tensor, num_classes: int, wd: float,
                     **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``fit_logistic`` solved in the span of the rows of ``x_ND`` (same optimum, fewer unknowns)."""
    Q_DR = row_space(x_ND)
    if Q_DR is None:
        return fit_logistic(x_ND, y_N, num_classes, wd, **kwargs)
    Z_RK, b_K = fit_logistic(x_ND @ Q_DR, y_N, num_classes, wd, **kwargs)
    return Q_DR @ Z_RK, b_K


def linear_probe(train_ND: torch.Tensor, train_y_N: torch.Tensor, val_ND: torch.Tensor, val_y_N: torch.Tensor, *,
                 num_classes: int | None = None, wd_grid=WD_GRID, heldout: float = HELDOUT, seed: int = 0,
                 search_iter: int = SEARCH_ITER, max_iter: int = MAX_ITER,
                 device: torch.device | str | None = None) -> dict:
    """Choose wd on a held-out split of train, refit on all of train, evaluate on val.

    Features are standardized with the whole training set's statistics, also for the
    search (they use no labels, so the held-out part leaks nothing that matters), which
    lets one row-space basis serve every fit. The search walks the grid from strong to
    weak decay, each fit warm-started from the previous one, for at most
    ``search_iter`` L-BFGS iterations; the final fit starts from zero and runs up to
    ``max_iter``. Ties in held-out accuracy go to the larger wd (the simpler model).

    Returns ``{"top1": val top-1, "wd": chosen wd, "train_top1": ..., "heldout": [[wd, top-1], ...]}``
    (accuracies as fractions in [0, 1]).
    """
    device = torch.device(device) if device is not None else train_ND.device
    if num_classes is None:
        num_classes = int(max(train_y_N.max(), val_y_N.max())) + 1
    train_ND, val_ND = train_ND.to(device, torch.float32), val_ND.to(device, torch.float32)
    train_y_N, val_y_N = train_y_N.to(device), val_y_N.to(device)
    train_ND, val_ND = standardize(train_ND, val_ND)
    Q_DR = row_space(train_ND)
    if Q_DR is not None:
        train_ND, val_ND = train_ND @ Q_DR, val_ND @ Q_DR  # exact: see row_space

    n = len(train_ND)
    n_held = min(max(1, round(heldout * n)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    held, fit = order[:n_held], order[n_held:]
    scores, warm = [], None
    for wd in sorted(wd_grid, reverse=True):
        warm = fit_logistic(train_ND[fit], train_y_N[fit], num_classes, wd, max_iter=search_iter, init=warm)
        scores.append((wd, top1(train_ND[held], train_y_N[held], *warm)))
    best_wd = max(scores, key=lambda s: (s[1], s[0]))[0]

    W, b_K = fit_logistic(train_ND, train_y_N, num_classes, best_wd, max_iter=max_iter)
    return {
        "top1": top1(val_ND, val_y_N, W, b_K),
        "wd": best_wd,
        "train_top1": top1(train_ND, train_y_N, W, b_K),
        "heldout": sorted([wd, acc] for wd, acc in scores),
    }
