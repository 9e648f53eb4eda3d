"""Small user-style models for encoder tests (importable as ``custom_nets:NAME``)."""

import torch
import torch.nn as nn


def small_convnet(in_chans: int = 3, num_classes: int = 10) -> nn.Sequential:
    """A plain Sequential convnet with its head inside the same Sequential."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),   # 0-2: 1x
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),  # 3-5: 2x
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),        # 6-8: 2x
        nn.MaxPool2d(2),                                                        # 9: 4x
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),        # 10-12: 4x
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),      # 13-15: head
    )


class TwoPath(nn.Module):
    """A model whose forward is not a chain of its children (a skip across stages)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
        self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.c = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        a = self.a(x)
        b = self.b(a) + nn.functional.avg_pool2d(a, 2).repeat(1, 2, 1, 1)
        return self.fc(self.pool(self.c(b)).flatten(1))


def gn_convnet(in_chans: int = 1, width: int = 16) -> nn.Sequential:
    """A small convnet with GroupNorm: its loss does not depend on how a batch is split
    over ranks (BatchNorm's would), so one process and two ranks can be compared."""
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(4, 2 * width), nn.ReLU(),
        nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.GroupNorm(4, 4 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10),
    )


class Misbehave(nn.Module):
    """Passes its input through, except on ``count`` training forwards from the
    ``at_call``-th on (counted only with gradients on, so building the Encoder does not
    count): then it returns NaNs ("nan") or raises ("raise"), as a user's model that
    diverges or breaks would."""

    def __init__(self, at_call: int, mode: str, count: int = 1):
        super().__init__()
        self.at_call, self.mode, self.count, self.calls = at_call, mode, count, 0

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.at_call <= self.calls < self.at_call + self.count:
                if self.mode == "raise":
                    raise RuntimeError(f"the model broke at call {self.calls}")
                return x * float("nan")
        return x


def misbehaving_convnet(in_chans: int = 1, at_call: int = 3, mode: str = "nan", count: int = 1) -> nn.Sequential:
    """``small_convnet`` with ``Misbehave`` before its first BatchNorm, so a NaN forward
    would poison the running statistics."""
    net = small_convnet(in_chans)
    return nn.Sequential(net[0], Misbehave(at_call, mode, count), *net[1:])


def unbuildable(in_chans: int = 1) -> nn.Module:
    """A builder that fails: a test that reaches it built the model too early."""
    raise RuntimeError("unbuildable was called")
