"""Optimizers: SGD (Nesterov) and AdamW from torch; LARS and LAMB written here.

Parameter groups: weights get weight decay (and, for LARS/LAMB, the layer-wise trust
ratio); biases and normalisation parameters (1-D) get neither, as in Goyal et al. 2017,
You et al. 2017 (LARS) and every SSL recipe since.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from convssl.train.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "adapt": False},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    return optimizer_for_groups(param_groups(model, cfg.weight_decay), cfg, lr)


def optimizer_for_groups(groups: list[dict], cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """``cfg.name``'s optimizer over prepared groups (each with ``weight_decay`` and ``adapt``)."""
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    return LAMB(groups, lr=lr, betas=cfg.betas, eps=cfg.eps)


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman, Ginsburg 2017), SGD with momentum.

    For a group with ``adapt``: g <- g + wd*w; g <- g * eta*||w|| / ||g|| (when both norms
    are > 0); buf <- momentum*buf + g; w <- w - lr*buf. Other groups: plain momentum SGD.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, eta: float = 0.001, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, eta=eta, weight_decay=weight_decay, adapt=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["adapt"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


class LAMB(torch.optim.Optimizer):
    """Layer-wise Adaptive Moments (You et al. 2020, Algorithm 2), as used by SparK.

    m, v: Adam moments with bias correction; r = m_hat / (sqrt(v_hat) + eps) + wd*w;
    for ``adapt`` groups the step is scaled by ||w|| / ||r|| (1 when either is 0).
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adapt=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])
                if group["weight_decay"]:
                    r.add_(p, alpha=group["weight_decay"])
                trust = 1.0
                if group["adapt"]:
                    w_norm, r_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(r)
                    trust = torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, torch.ones_like(w_norm))
                p.sub_(r * (group["lr"] * trust))
        return loss
