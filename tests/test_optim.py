"""LARS, LAMB and the schedules against their written definitions."""

import math

import torch

from convssl.train.optim import LAMB, LARS, build_optimizer
from convssl.train_config import OptimConfig
from convssl.train.schedule import cosine, warmup_cosine


def test_lars_matches_definition():
    torch.manual_seed(0)
    w0, g = torch.randn(5, 3), torch.randn(5, 3)
    p = torch.nn.Parameter(w0.clone())
    opt = LARS([{"params": [p], "weight_decay": 0.01, "adapt": True}], lr=0.5, momentum=0.9, eta=0.02)
    buf = torch.zeros_like(w0)
    w = w0.clone()
    for _ in range(3):
        p.grad = g.clone()
        opt.step()
        d = g + 0.01 * w
        d = d * (0.02 * w.norm() / d.norm())
        buf = 0.9 * buf + d if _ else d
        w = w - 0.5 * buf
        torch.testing.assert_close(p.data, w)


def test_lamb_matches_definition():
    torch.manual_seed(0)
    w0, g = torch.randn(4, 4), torch.randn(4, 4)
    p = torch.nn.Parameter(w0.clone())
    opt = LAMB([{"params": [p], "weight_decay": 0.05, "adapt": True}], lr=0.1, betas=(0.9, 0.95), eps=1e-6)
    m = v = torch.zeros_like(w0)
    w = w0.clone()
    for t in range(1, 4):
        p.grad = g * t
        opt.step()
        m = 0.9 * m + 0.1 * g * t
        v = 0.95 * v + 0.05 * (g * t) ** 2
        r = (m / (1 - 0.9**t)) / ((v / (1 - 0.95**t)).sqrt() + 1e-6) + 0.05 * w
        w = w - 0.1 * (w.norm() / r.norm()) * r
        torch.testing.assert_close(p.data, w)


def test_biases_and_norms_get_no_weight_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    opt = build_optimizer(model, OptimConfig(name="sgd", weight_decay=0.1), lr=1.0)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}


def test_warmup_then_cosine():
    peak, total, warm = 1.0, 100, 10
    assert warmup_cosine(0, total, peak, warm, 0.0) == 0.1
    assert warmup_cosine(9, total, peak, warm, 0.0) == 1.0
    assert math.isclose(warmup_cosine(55, total, peak, warm, 0.0), 0.5)
    assert math.isclose(warmup_cosine(100, total, peak, warm, 0.01), 0.01)
    assert math.isclose(cosine(0, 10, 0.04, 0.2), 0.04) and math.isclose(cosine(10, 10, 0.04, 0.2), 0.2)


def test_lars_and_lamb_fused_over_many_parameters_match_the_per_parameter_definition():
    # the _foreach updates must keep each parameter's own norms and state, in both kinds of group
    torch.manual_seed(1)
    shapes = [(6, 3), (4,), (2, 2, 3)]
    w0 = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]

    def groups(ps):
        return [{"params": [ps[0], ps[2]], "weight_decay": 0.01, "adapt": True},
                {"params": [ps[1]], "weight_decay": 0.0, "adapt": False}]

    lars_ps = [torch.nn.Parameter(w.clone()) for w in w0]
    lamb_ps = [torch.nn.Parameter(w.clone()) for w in w0]
    lars = LARS(groups(lars_ps), lr=0.3, momentum=0.9, eta=0.02)
    lamb = LAMB(groups(lamb_ps), lr=0.1, betas=(0.9, 0.95), eps=1e-6)
    adapt, wd = [True, False, True], [0.01, 0.0, 0.01]
    w_lars, w_lamb = [w.clone() for w in w0], [w.clone() for w in w0]
    buf, m, v = [None] * 3, [torch.zeros(s) for s in shapes], [torch.zeros(s) for s in shapes]
    for t, step_grads in enumerate(grads, start=1):
        for ps in (lars_ps, lamb_ps):
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
        lars.step()
        lamb.step()
        for i, g in enumerate(step_grads):
            d = g + wd[i] * w_lars[i]
            if adapt[i]:
                d = d * (0.02 * w_lars[i].norm() / d.norm())
            buf[i] = d if buf[i] is None else 0.9 * buf[i] + d
            w_lars[i] = w_lars[i] - 0.3 * buf[i]
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.95 * v[i] + 0.05 * g**2
            r = (m[i] / (1 - 0.9**t)) / ((v[i] / (1 - 0.95**t)).sqrt() + 1e-6) + wd[i] * w_lamb[i]
            trust = w_lamb[i].norm() / r.norm() if adapt[i] else 1.0
            w_lamb[i] = w_lamb[i] - 0.1 * trust * r
        for p, w in zip(lars_ps, w_lars):
            torch.testing.assert_close(p.data, w)
        for p, w in zip(lamb_ps, w_lamb):
            torch.testing.assert_close(p.data, w)
        assert all(p.grad is not None and torch.equal(p.grad, g) for p, g in zip(lars_ps, step_grads))  # grads untouched
