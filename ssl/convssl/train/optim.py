"""Optimizers: SGD (Nesterov) and AdamW from torch; LARS and LAMB written here.

Parameter groups: weights get weight decay (and, for LARS/LAMB, the layer-wise trust
ratio); biases and normalisation parameters (1-D) get neither, as in Goyal et al. 2017,
You et al. 2017 (LARS) and every SSL recipe since.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from convssl.train_config import OptimConfig


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


def _trust_ratios(w_norms: list[torch.Tensor], u_norms: list[torch.Tensor], scale: float = 1.0) -> list[torch.Tensor]:
    """``scale * ||w|| / ||u||`` per parameter, 1 where either norm is 0: one stacked op,
    on the device, no host sync."""
    w_P, u_P = torch.stack(w_norms), torch.stack(u_norms)
    ratio_P = torch.where((w_P > 0) & (u_P > 0), scale * w_P / u_P, torch.ones_like(w_P))
    return list(ratio_P.unbind())


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman, Ginsburg 2017), SGD with momentum.

    For a group with ``adapt``: g <- g + wd*w; g <- g * eta*||w|| / ||g|| (when both norms
    are > 0); buf <- momentum*buf + g; w <- w - lr*buf. Other groups: plain momentum SGD.
    Every update is a ``torch._foreach_*`` op over the group's parameters.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, eta: float = 0.001, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, eta=eta, weight_decay=weight_decay, adapt=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                g = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            else:
                g = [t.clone() for t in grads]
            if group["adapt"]:
                torch._foreach_mul_(g, _trust_ratios(torch._foreach_norm(params), torch._foreach_norm(g), group["eta"]))
            fresh = [i for i, p in enumerate(params) if "momentum_buffer" not in self.state[p]]
            for i in fresh:
                self.state[params[i]]["momentum_buffer"] = g[i]
            old = [i for i in range(len(params)) if i not in set(fresh)]
            if old:
                bufs = [self.state[params[i]]["momentum_buffer"] for i in old]
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, [g[i] for i in old])
            torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params], alpha=-group["lr"])
        return loss


class LAMB(torch.optim.Optimizer):
    """Layer-wise Adaptive Moments (You et al. 2020, Algorithm 2), as used by SparK.

    m, v: Adam moments with bias correction; r = m_hat / (sqrt(v_hat) + eps) + wd*w;
    for ``adapt`` groups the step is scaled by ||w|| / ||r|| (1 when either is 0).
    Every update is a ``torch._foreach_*`` op over the group's parameters.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adapt=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
            steps = [self.state[p]["step"] for p in params]
            m = [self.state[p]["exp_avg"] for p in params]
            v = [self.state[p]["exp_avg_sq"] for p in params]
            torch._foreach_mul_(m, b1)
            torch._foreach_add_(m, grads, alpha=1 - b1)
            torch._foreach_mul_(v, b2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
            denom = torch._foreach_sqrt(torch._foreach_div(v, [1 - b2**t for t in steps]))
            torch._foreach_add_(denom, group["eps"])
            r = torch._foreach_div(torch._foreach_div(m, [1 - b1**t for t in steps]), denom)
            if group["weight_decay"]:
                torch._foreach_add_(r, params, alpha=group["weight_decay"])
            if group["adapt"]:
                torch._foreach_mul_(r, _trust_ratios(torch._foreach_norm(params), torch._foreach_norm(r), group["lr"]))
                torch._foreach_sub_(params, r)
            else:
                torch._foreach_add_(params, r, alpha=-group["lr"])
        return loss
