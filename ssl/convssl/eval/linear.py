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

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from convssl.eval import lbfgs
from convssl.eval.lbfgs import Objective

WD_GRID = tuple(10.0 ** e for e in range(-6, 2))  # 1e-6 ... 10, log-spaced
HELDOUT = 0.2
SEARCH_ITER = 100  # for every grid value at once (one batched solve from zero)
MAX_ITER = 300  # the final fit, warm-started from the search at the chosen wd
# One thread for the fits: a batched L-BFGS solve is thousands of small parallel regions, and
# with 2 threads on 2 cores that any other work shares, each region waits for a descheduled
# thread (measured: the 8-wd search on 800 x 1000 took 0.25 s on 1 thread, 5-10 s on 2; the
# quickstart's 8 fits 17 s against 348 s). A thread count also changes float reductions enough
# to flip near-tied weight-decay choices (the quickstart's layer1 chose 1e-5 on 2 threads,
# 0.1 on 1: 84.0 vs 84.7), so a fixed count makes the result independent of the machine's.
FIT_THREADS = 1


def standardize(train_ND: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Centre and scale every set with the training set's per-dimension mean and std.

    Dimensions constant on the training set (std ~ 0) become 0, not inf.
    """
    mean_D, scale_D = _moments(train_ND)
    return [(x - mean_D) / scale_D for x in (train_ND, *others)]


def _moments(train_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean_D = train_ND.mean(0)
    std_D = train_ND.std(0, unbiased=False)
    return mean_D, torch.where(std_D > 1e-6 * std_D.max().clamp_min(1e-12), std_D, torch.full_like(std_D, torch.inf))


def logistic_objective(x_ND: torch.Tensor, y_N: torch.Tensor, num_classes: int, wd_S: torch.Tensor) -> Objective:
    """Mean CE + wd_s / 2 ||W_s||^2 for S weight decays at once, with its hand-written gradient.

    A problem's parameters are ``[W_KD.flatten(), b_K]`` (P = K * D + K). The S
    problems share two matmuls per evaluation, ``x @ W^T`` and ``r^T @ x``; the
    gradient is written out (X^T (softmax - onehot) / N + wd W) rather than taken by
    autograd, whose ``x.T @ r`` for a narrow r runs several times slower on CPU.
    """
    n, d = x_ND.shape
    k, s = num_classes, len(wd_S)
    onehot_N1K = F.one_hot(y_N, k).to(x_ND.dtype)[:, None, :]
    wd_S = wd_S.to(x_ND)

    def fun(theta_SP: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W_SKD = theta_SP[:, : k * d].reshape(s, k, d)
        b_SK = theta_SP[:, k * d:]
        logits_NSK = (x_ND @ W_SKD.reshape(s * k, d).T).view(n, s, k) + b_SK
        logp_NSK = torch.log_softmax(logits_NSK, dim=-1)
        f_S = -(logp_NSK * onehot_N1K).sum(-1).mean(0) + 0.5 * wd_S * W_SKD.pow(2).sum((1, 2))
        r_NSK = (logp_NSK.exp_() - onehot_N1K) / n
        gW_SKD = (r_NSK.view(n, s * k).T @ x_ND).view(s, k, d) + wd_S[:, None, None] * W_SKD
        return f_S, torch.cat([gW_SKD.reshape(s, k * d), r_NSK.sum(0)], dim=1)

    return fun


def _unpack(theta_P: torch.Tensor, d: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_DK, b_K)`` from one problem's flat parameters."""
    return theta_P[: k * d].view(k, d).T.contiguous(), theta_P[k * d:].clone()


def _pack(W_DK: torch.Tensor, b_K: torch.Tensor) -> torch.Tensor:
    return torch.cat([W_DK.T.reshape(-1), b_K])


def fit_logistic(x_ND: torch.Tensor, y_N: torch.Tensor, num_classes: int, wd: float, *,
                 max_iter: int = MAX_ITER, tol: float = 1e-6,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean CE(x W + b, y) + wd / 2 ||W||^2 by full-batch L-BFGS.

    Returns ``(W_DK, b_K)`` in ``x_ND``'s dtype and device. ``init`` warm-starts
    (used after the weight-decay search); the default start is zero.
    """
    d = x_ND.shape[1]
    y_N = y_N.to(x_ND.device)
    theta_1P = torch.zeros(1, num_classes * d + num_classes, dtype=x_ND.dtype, device=x_ND.device)
    if init is not None:
        theta_1P[0] = _pack(init[0].to(theta_1P), init[1].to(theta_1P))
    fun = logistic_objective(x_ND, y_N, num_classes, torch.tensor([wd], dtype=x_ND.dtype))
    theta_1P, _ = lbfgs.minimize(fun, theta_1P, max_iter=max_iter, tol=tol)
    return _unpack(theta_1P[0], d, num_classes)


def fit_path(x_ND: torch.Tensor, y_N: torch.Tensor, num_classes: int, wd_grid, *, max_iter: int,
             tol: float = 1e-6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``fit_logistic`` from zero for every weight decay of ``wd_grid``, all in one batched solve."""
    d = x_ND.shape[1]
    wd_S = torch.tensor(list(wd_grid), dtype=x_ND.dtype)
    theta_SP = torch.zeros(len(wd_S), num_classes * d + num_classes, dtype=x_ND.dtype, device=x_ND.device)
    fun = logistic_objective(x_ND, y_N.to(x_ND.device), num_classes, wd_S)
    theta_SP, _ = lbfgs.minimize(fun, theta_SP, max_iter=max_iter, tol=tol)
    return [_unpack(theta_P, d, num_classes) for theta_P in theta_SP]


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


@contextmanager
def intra_op_threads(n: int | None):
    """Run the block on ``n`` intra-op CPU threads (None: leave torch's setting), restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def linear_probe(train_ND: torch.Tensor, train_y_N: torch.Tensor, val_ND: torch.Tensor, val_y_N: torch.Tensor, *,
                 num_classes: int | None = None, wd_grid=WD_GRID, heldout: float = HELDOUT, seed: int = 0,
                 search_iter: int = SEARCH_ITER, max_iter: int = MAX_ITER,
                 device: torch.device | str | None = None, threads: int | None = FIT_THREADS) -> dict:
    """Choose wd on a held-out split of train, refit on all of train, evaluate on val.

    Features are standardized with the whole training set's statistics, also for the
    search (they use no labels, so the held-out part leaks nothing that matters), which
    lets one row-space basis serve every fit. The search fits every wd of the grid from
    zero for at most ``search_iter`` L-BFGS iterations, all in one batched solve (one
    pass over the features per evaluation serves every wd); the final fit on all of
    train starts from the search's solution at the chosen wd and runs up to
    ``max_iter``. Ties in held-out accuracy go to the larger wd (the simpler model).
    Half-precision features are upcast to float32 here, one stage at a time.

    On the CPU the fit runs on ``threads`` intra-op threads (default 1, see ``FIT_THREADS``).

    Returns ``{"top1": val top-1, "wd": chosen wd, "train_top1": ..., "heldout": [[wd, top-1], ...],
    "correct": bool [M] per val sample}`` (accuracies as fractions in [0, 1]).
    """
    with intra_op_threads(threads):
        return _linear_probe(train_ND, train_y_N, val_ND, val_y_N, num_classes=num_classes, wd_grid=wd_grid,
                             heldout=heldout, seed=seed, search_iter=search_iter, max_iter=max_iter, device=device)


def _linear_probe(train_ND, train_y_N, val_ND, val_y_N, *, num_classes, wd_grid, heldout, seed, search_iter,
                  max_iter, device) -> dict:
    device = torch.device(device) if device is not None else train_ND.device
    if num_classes is None:
        num_classes = int(max(train_y_N.max(), val_y_N.max())) + 1
    n = len(train_ND)
    n_held = min(max(1, round(heldout * n)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # held-out rows first, so the held and fit parts are views, not copies
    train_ND = _float32(train_ND[order], device)
    train_y_N = train_y_N[order].to(device)
    val_ND, val_y_N = _float32(val_ND, device), val_y_N.to(device)
    mean_D, scale_D = _moments(train_ND)
    train_ND.sub_(mean_D).div_(scale_D)  # in place: train_ND is this function's own copy
    val_ND = (val_ND - mean_D) / scale_D
    Q_DR = row_space(train_ND)
    if Q_DR is not None:
        train_ND, val_ND = train_ND @ Q_DR, val_ND @ Q_DR  # exact: see row_space

    held_ND, held_y_N = train_ND[:n_held], train_y_N[:n_held]
    grid = sorted(wd_grid, reverse=True)
    path = fit_path(train_ND[n_held:], train_y_N[n_held:], num_classes, grid, max_iter=search_iter)
    scores = [(wd, top1(held_ND, held_y_N, *fit)) for wd, fit in zip(grid, path)]
    best = max(range(len(grid)), key=lambda i: (scores[i][1], scores[i][0]))

    W, b_K = fit_logistic(train_ND, train_y_N, num_classes, grid[best], max_iter=max_iter, init=path[best])
    correct_M = (val_ND @ W + b_K).argmax(1) == val_y_N
    return {
        "top1": correct_M.double().mean().item(),
        "wd": grid[best],
        "train_top1": top1(train_ND, train_y_N, W, b_K),
        "heldout": sorted([wd, acc] for wd, acc in scores),
        "correct": correct_M.cpu(),
    }


def _float32(x_ND: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x_ND.to(device=device, dtype=torch.float32)
