"""Several pretext tasks in one run, over one shared encoder.

Doersch and Zisserman 2017 ("Multi-task self-supervised visual learning") found that
combining pretext tasks beats each one alone; E-SSL (Dangovski et al. 2022) adds 4-way
rotation prediction to SimCLR with ``loss += 0.4 * rot_loss``. A recipe lists the tasks::

    task:
      name: multi
      weighting: fixed            # or: uncertainty (Kendall, Gal, Cipolla 2018)
      tasks:
        - {name: simclr, weight: 1.0, temperature: 0.5}
        - {name: rotation, weight: 0.4}

Each entry is a task section (its own keys, parsed into a ``TaskSpec`` by the same code as
a top-level one, at ``task.tasks[i]``) plus ``weight``. Every sub-task gets the very same ``Encoder`` object
(SparK wraps it by composition, so its sparse pass and the others' dense passes share
the parameters; MoCo deep-copies it into its key encoder, as alone) and keeps its own
heads, buffers (MoCo's queue) and views: the loader runs each sub-task's
``loader_transform`` on the same decoded image and files its entries under the task's
name (``"rotation/img"``), and ``forward`` hands each sub-task its own entries back
under their plain names (plus the shared ones: ``key``, ``cls``). Each sub-task's
scalars are logged as ``<task>/<name>`` (``rotation/loss``, ``rotation/acc``).

Loss balancing:
- ``fixed``: ``loss = sum_i w_i * L_i``.
- ``uncertainty``: Kendall et al. 2018 (eq. 7 with s_i = log sigma_i^2, the form their
  sec. 3.2 recommends for stability), ``loss = sum_i exp(-s_i) * L_i + s_i``, the
  s_i learned with the network; s_i starts at ``-log w_i`` so the first step weights the
  tasks as the recipe says. The effective weights ``exp(-s_i)`` are logged as
  ``<task>/weight``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from convssl.config import coerce
from convssl.errors import ConfigError
from convssl.tasks.base import TaskBase
from convssl.tasks.registry import TaskSpec, build_task

WEIGHT_KEY = "weight"


@dataclass(frozen=True)
class WeightedTask:
    """One ``task.tasks[i]`` entry: a sub-task's spec and the weight of its loss."""

    spec: TaskSpec
    weight: float

    @classmethod
    def from_section(cls, entry, path: str) -> WeightedTask:
        """``{name, weight (default 1.0), the task's own keys}``, checked: a task other than
        ``multi``, a finite weight >= 0, and the task's own keys and types."""
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: expected a task section such as {{name: rotation, weight: 1.0}}, got {entry!r}")
        section = dict(entry)
        weight = coerce(float, section.pop(WEIGHT_KEY, 1.0), f"{path}.{WEIGHT_KEY}")
        if weight < 0 or not math.isfinite(weight):
            raise ConfigError(f"{path}.{WEIGHT_KEY} must be a finite number >= 0, got {weight}")
        spec = TaskSpec.from_section(section, path)
        if issubclass(spec.cls, MultiTask):
            raise ConfigError(f"{path}: a multi task cannot nest another multi task; list its tasks here instead")
        return cls(spec=spec, weight=weight)

    @property
    def key(self) -> str:
        """The sub-task's name in the batch, the logs and the state_dict: the recipe's name,
        or the class name of a ``package.module:Class`` one."""
        return self.spec.name.rpartition(":")[2]

    def to_section(self) -> dict:
        return {**self.spec.to_section(), WEIGHT_KEY: self.weight}


def _rotation_alone() -> tuple[WeightedTask, ...]:
    return (WeightedTask.from_section({"name": "rotation"}, "task.tasks[0]"),)


class NamespacedViews:
    """The loader transform of a multi task: every sub-task's transform on the same image
    (drawing in turn from the sample's generator), entries filed as ``"<task>/<entry>"``."""

    def __init__(self, transforms: dict):
        self.transforms = transforms

    def __call__(self, img_CHW: torch.Tensor, generator: torch.Generator) -> dict:
        out = {}
        for name, transform in self.transforms.items():
            for key, value in transform(img_CHW, generator).items():
                out[f"{name}/{key}"] = value
        return out


def sub_batch(batch: dict, name: str) -> dict:
    """The entries of ``batch`` for sub-task ``name``: its own (prefix removed) and the
    shared ones (those without a task prefix, e.g. ``key``)."""
    prefix = name + "/"
    shared = {k: v for k, v in batch.items() if "/" not in k}
    return {**shared, **{k[len(prefix):]: v for k, v in batch.items() if k.startswith(prefix)}}


class MultiTask(TaskBase):
    """Weighted sum of several pretext tasks on one shared encoder.

    forward(batch) -> {"loss", "<task>/loss", "<task>/<scalar>", ...}.
    """

    manages_batchnorm_sync = False  # per instance: True when any sub-task manages it

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """The ``multi`` task's section.

        tasks: the sub-tasks, each ``{name, weight (default 1.0), its own keys}``; each task
            at most once. The default, rotation alone, is the smallest valid run.
        weighting: ``fixed`` (the weights as given) or ``uncertainty`` (Kendall et al. 2018,
            learned weights initialised from the given ones, which must then be > 0).
        """

        tasks: tuple[WeightedTask, ...] = field(default_factory=_rotation_alone)
        weighting: Literal["fixed", "uncertainty"] = "fixed"

        def __post_init__(self):
            # ConfigError (not ValueError) so from_dict passes the nested key path through as is
            if not self.tasks:
                raise ConfigError("task.tasks is empty; list at least one task, e.g. [{name: rotation, weight: 1.0}]")
            keys = [t.key for t in self.tasks]
            repeated = sorted({k for k in keys if keys.count(k) > 1})
            if repeated:
                raise ConfigError(f"task.tasks lists {', '.join(repeated)} more than once; each task at most once")
            if self.weighting == "uncertainty" and any(t.weight <= 0 for t in self.tasks):
                raise ConfigError("task.weighting=uncertainty starts from log-variances -log(weight): "
                                  "every weight must be > 0")

    def __init__(self, encoder, cfg: MultiTask.Config, data):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.tasks = nn.ModuleDict({t.key: build_task(t.spec, encoder, data) for t in cfg.tasks})
        weights = torch.tensor([t.weight for t in cfg.tasks], dtype=torch.float32)
        self.register_buffer("weights", weights)
        if cfg.weighting == "uncertainty":
            self.log_vars = nn.Parameter(-weights.log())
        else:
            self.log_vars = None
        self.manages_batchnorm_sync = any(t.manages_batchnorm_sync for t in self.tasks.values())

    def loader_transform(self):
        return NamespacedViews({name: task.loader_transform() for name, task in self.tasks.items()})

    def task_weights(self) -> torch.Tensor:
        """The weight of each sub-task's loss in this step: fixed, or ``exp(-s_i)``."""
        return self.weights if self.log_vars is None else torch.exp(-self.log_vars)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        weights = self.task_weights()
        out: dict[str, torch.Tensor] = {}
        total = None
        for i, (name, task) in enumerate(self.tasks.items()):
            result = task(sub_batch(batch, name))
            term = weights[i] * result["loss"].float()
            if self.log_vars is not None:
                term = term + self.log_vars[i]
            total = term if total is None else total + term
            for key, value in result.items():
                if torch.is_tensor(value):
                    out[f"{name}/{key}"] = value.detach()
            out[f"{name}/weight"] = weights[i].detach()
        out["loss"] = total
        return out

    def after_step(self, step: int, total_steps: int) -> None:
        for task in self.tasks.values():
            task.after_step(step, total_steps)

    def pictures(self, batch: dict) -> torch.Tensor | None:
        """The first sub-task's picture that has one (e.g. SparK's reconstructions)."""
        for name, task in self.tasks.items():
            picture = task.pictures(sub_batch(batch, name))
            if picture is not None:
                return picture
        return None
