"""LARS, LAMB and the schedules against their written definitions."""

import math

import torch

from convssl.train.optim import LAMB, LARS, build_optimizer
from convssl.train.config import OptimConfig
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
