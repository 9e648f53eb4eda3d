"""Pretext tasks: one file, one ``nn.Module`` each, named in ``convssl.tasks.registry``
(or from outside the package: ``task.name: package.module:Class``, or an entry point of
the ``convssl.tasks`` group).

``PretextTask`` below is the whole contract between a task and the trainer: the trainer
calls exactly these members and nothing else, and ``check_task`` (run by
``registry.task_class`` on every task, built in or not) names whatever a task lacks.
``convssl.tasks.base.TaskBase`` writes the optional members once (no BatchNorm handling,
nothing after a step, no pictures, ``self.encoder`` exported); a task subclasses it and
writes ``Config``, ``__init__``, ``loader_transform`` and ``forward``.

Tasks never touch the optimizer, the data loader or the file system.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import dataclasses

import torch
import torch.nn as nn

from convssl.errors import ConfigError


@runtime_checkable
class PretextTask(Protocol):
    """What the trainer may call on a task (an ``nn.Module``).

    - ``Config``: class attribute, a frozen keyword-only dataclass of the task's own
      hyper-parameters (the recipe's ``task:`` section minus ``name``).
    - ``__init__(encoder, cfg, data)``: the task owns the shared dense ``Encoder`` as
      ``self.encoder`` and its own heads, so DDP over the task syncs both. A task that runs
      the encoder differently (SparK's sparse execution) wraps it by composition and never
      changes it, so several tasks can share one encoder.
    - ``manages_batchnorm_sync``: True when the task synchronises BatchNorm across ranks
      itself (SparK's sparse BN, MoCo's shuffle-BN); the trainer then leaves its BNs alone.
    - ``loader_transform()``: the per-sample transform the loader's workers run,
      ``(img_uint8_CHW, torch.Generator) -> dict[str, Tensor | list[Tensor]]``; its entries
      reach ``forward`` batched (see ``convssl.views.crop_views``: ``crop_views(data, n)`` gives
      ``{"img": [view, ...]}``).
    - ``forward(batch) -> dict[str, Tensor]``: ``"loss"`` required; other 0-d tensors are
      logged under their names.
    - ``after_step(step, total_steps)``: after each optimizer step (momentum encoders).
    - ``pictures(batch) -> Tensor | None``: an image grid ``[3, H, W]`` in 0..1 saved every
      ``train.image_every`` steps, or None.
    - ``export_encoder() -> Encoder``: the encoder whose weights checkpoints store as the
      backbone and ``convssl export`` writes.
    """

    manages_batchnorm_sync: bool

    def loader_transform(self): ...

    def forward(self, batch: dict) -> dict[str, torch.Tensor]: ...

    def after_step(self, step: int, total_steps: int) -> None: ...

    def pictures(self, batch: dict) -> torch.Tensor | None: ...

    def export_encoder(self): ...


CONTRACT = ("Config", "manages_batchnorm_sync", "loader_transform", "forward", "after_step",
            "pictures", "export_encoder")


def check_task(cls, name: str) -> None:
    """Raise a ``ConfigError`` unless ``cls`` is an ``nn.Module`` class with every member of
    the contract and a dataclass ``Config``; the message names what is wrong."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"task {name!r} is {cls!r}, not an nn.Module class; the task contract "
                          f"(convssl.tasks.PretextTask) asks for a class, e.g. a subclass of convssl.tasks.base.TaskBase")
    where = f"task {name!r} ({cls.__module__}.{cls.__qualname__}) does not follow the task contract " \
            "(convssl.tasks.PretextTask)"
    missing = [member for member in CONTRACT if not hasattr(cls, member)]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    if not (isinstance(cls.Config, type) and dataclasses.is_dataclass(cls.Config)):
        raise ConfigError(f"{where}: its Config is {cls.Config!r}, not a dataclass of the task's keys")
