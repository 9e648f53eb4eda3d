"""L-BFGS over a batch of independent problems that share one evaluation.

The linear probe fits one logistic regression per weight decay on the same features;
the cost of an evaluation is reading the N x D feature matrix (a skinny matmul is
memory-bound), so evaluating all S problems in one matmul costs about as much as one.
This solver keeps S separate L-BFGS states (Nocedal & Wright 2006, Algorithm 7.4, the
two-loop recursion) as rows of [S, P] tensors, with a per-problem backtracking line
search (Armijo condition, c1 = 1e-4; every trial point of the batch is evaluated
together). A problem that has converged stops moving; the loop ends when all have.

Legend: S problems, P parameters per problem, M history pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # x_SP -> (f_S, g_SP)

_ARMIJO = 1e-4
_MAX_BACKTRACKS = 20


def minimize(fun: Objective, x_SP: torch.Tensor, *, max_iter: int, history: int = 20,
             tol: float = 1e-6) -> tuple[torch.Tensor, int]:
    """Minimise every row's objective from ``x_SP``; returns ``(x_SP, evaluations)``.

    ``fun(x_SP)`` returns each problem's value ``f_S`` and gradient ``g_SP``. A problem
    stops when its largest gradient entry is at most ``tol`` or its value stops
    changing (relative 1e-12), or after ``max_iter`` iterations.
    """
    x_SP = x_SP.clone()
    f_S, g_SP = fun(x_SP)
    evals = 1
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    rho_hist: list[torch.Tensor] = []
    active_S = g_SP.abs().amax(1) > tol
    for it in range(max_iter):
        if not bool(active_S.any()):
            break
        d_SP = _direction(g_SP, s_hist, y_hist, rho_hist)
        slope_S = (g_SP * d_SP).sum(1)
        uphill_S = slope_S >= 0  # a stale history: restart that problem along -g
        if bool(uphill_S.any()):
            d_SP = torch.where(uphill_S[:, None], -g_SP, d_SP)
            slope_S = torch.where(uphill_S, -(g_SP * g_SP).sum(1), slope_S)
        if it == 0:  # no curvature yet: a first step of length <= 1 in the L1 sense, as torch's LBFGS
            t_S = (1.0 / g_SP.abs().sum(1).clamp_min(1e-12)).clamp(max=1.0)
        else:
            t_S = torch.ones_like(f_S)
        x_new, f_new, g_new, evals_used = _backtrack(fun, x_SP, f_S, g_SP, d_SP, slope_S, t_S, active_S)
        evals += evals_used
        s_SP, y_SP = x_new - x_SP, g_new - g_SP
        sy_S = (s_SP * y_SP).sum(1)
        useful_S = sy_S > 1e-10 * (y_SP * y_SP).sum(1).clamp_min(1e-30)
        s_hist.append(s_SP)
        y_hist.append(y_SP)
        rho_hist.append(torch.where(useful_S, 1.0 / sy_S.clamp_min(1e-30), torch.zeros_like(sy_S)))
        if len(s_hist) > history:
            del s_hist[0], y_hist[0], rho_hist[0]
        stalled_S = (f_S - f_new).abs() <= 1e-12 * f_S.abs().clamp_min(1.0)
        x_SP, f_S, g_SP = x_new, f_new, g_new
        active_S = active_S & (g_SP.abs().amax(1) > tol) & ~stalled_S
    return x_SP, evals


def _direction(g_SP, s_hist, y_hist, rho_hist) -> torch.Tensor:
    """-H g by the two-loop recursion, per problem; pairs with rho = 0 are skipped."""
    q_SP = g_SP.clone()
    alphas = []
    for s_SP, y_SP, rho_S in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist)):
        a_S = rho_S * (s_SP * q_SP).sum(1)
        q_SP -= a_S[:, None] * y_SP
        alphas.append(a_S)
    gamma_S = torch.ones_like(g_SP[:, 0])  # the newest useful pair scales the initial Hessian
    unset_S = torch.ones_like(gamma_S, dtype=torch.bool)
    for s_SP, y_SP, rho_S in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist)):
        use_S = unset_S & (rho_S > 0)
        gamma_S = torch.where(use_S, 1.0 / (rho_S * (y_SP * y_SP).sum(1)).clamp_min(1e-30), gamma_S)
        unset_S = unset_S & ~use_S
    r_SP = q_SP * gamma_S[:, None]
    for s_SP, y_SP, rho_S, a_S in zip(s_hist, y_hist, rho_hist, reversed(alphas)):
        b_S = rho_S * (y_SP * r_SP).sum(1)
        r_SP += s_SP * (a_S - b_S)[:, None]
    return -r_SP


def _backtrack(fun, x_SP, f_S, g_SP, d_SP, slope_S, t_S, active_S):
    """Halve each active problem's step until its Armijo condition holds (all trials in
    one call); a problem that finds no decrease stays where it was."""
    x_new, f_new, g_new = x_SP, f_S, g_SP
    pending_S = active_S
    evals = 0
    for _ in range(_MAX_BACKTRACKS):
        x_try = x_SP + t_S[:, None] * d_SP
        f_try, g_try = fun(x_try)
        evals += 1
        ok_S = pending_S & (f_try <= f_S + _ARMIJO * t_S * slope_S)  # NaN fails
        x_new = torch.where(ok_S[:, None], x_try, x_new)
        f_new = torch.where(ok_S, f_try, f_new)
        g_new = torch.where(ok_S[:, None], g_try, g_new)
        pending_S = pending_S & ~ok_S
        if not bool(pending_S.any()):
            break
        t_S = torch.where(pending_S, t_S * 0.5, t_S)
    return x_new, f_new, g_new, evals
