"""A pretext task from outside convssl, written as a user's own installed package would be.

``write_plugin(folder)`` writes the package ``convssl_task_plugin`` (one task: is the
image upside down?) and its ``*.dist-info`` folder, whose ``entry_points.txt`` registers
the task under ``convssl.tasks`` as ``upside_down``: with ``folder`` on ``sys.path``,
``importlib.metadata`` finds it as it finds an installed distribution. The package imports
only ``convssl.tasks.base`` from convssl, as a plugin should.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = "convssl_task_plugin"
ENTRY_POINT = "upside_down"                      # task.name through the entry point
CLASS_PATH = f"{PACKAGE}.tasks:UpsideDown"       # task.name as package.module:Class

TASK_SOURCE = '''"""Upside-down prediction: each image and its vertical flip, a 2-way head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convssl.tasks.base import TaskBase


class Resize:
    """Loader transform: the image resized to the recipe's data.size, as one view."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img_CHW, generator):
        x = F.interpolate(img_CHW[None].float(), size=(self.size, self.size), mode="bilinear", antialias=True)
        return {"img": [x[0].round().clamp(0, 255).to(torch.uint8)]}


class UpsideDown(TaskBase):
    @dataclass(frozen=True, kw_only=True)
    class Config:
        hidden: int = 32

    def __init__(self, encoder, cfg, data):
        super().__init__()
        self.encoder, self.cfg, self.data = encoder, cfg, data
        self.head = nn.Sequential(nn.Linear(encoder.feature_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 2))

    def loader_transform(self):
        return Resize(self.data.size)

    def forward(self, batch):
        img = batch["img"][0]
        mean = torch.tensor(self.data.mean, device=img.device).view(1, -1, 1, 1)
        std = torch.tensor(self.data.std, device=img.device).view(1, -1, 1, 1)
        x = (img.float() / 255 - mean) / std
        x = torch.cat([x, x.flip(-2)])
        y = torch.arange(2, device=x.device).repeat_interleave(img.shape[0])
        logits = self.head(self.encoder.pool(x))
        return {"loss": F.cross_entropy(logits, y), "acc": (logits.argmax(1) == y).float().mean()}


class NotATask(nn.Module):
    """A module that writes forward and nothing else of the contract (for the registry's error)."""

    def forward(self, batch):
        return {}
'''


def write_plugin(folder: Path) -> None:
    """The package and its distribution metadata under ``folder`` (to go on ``sys.path``)."""
    package = folder / PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(TASK_SOURCE)
    info = folder / f"{PACKAGE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[convssl.tasks]\n{ENTRY_POINT} = {CLASS_PATH}\n")
