"""Pretext tasks: one file, one ``nn.Module`` each, registered in ``convssl.registry``.

``PretextTask`` below is the whole contract between a task and the trainer: the trainer
calls exactly these members and nothing else, and ``check_task`` (run by
``registry.build_task``) names whatever a task lacks. There is no base class; a task that
needs nothing special writes each hook as a one-liner, e.g.::

    def loader_transform(self):
        return crop_views(self.data)          # one random resized crop: batch["img"][0]

    def after_step(self, step, total_steps):
        pass

    def pictures(self, batch):
        return None

    def export_encoder(self):
        return self.encoder

Tasks never touch the optimizer, the data loader or the file system.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

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


def check_task(cls: type, name: str) -> None:
    """Raise a ``ConfigError`` naming every member of the contract task class ``cls`` lacks."""
    missing = [member for member in CONTRACT if not hasattr(cls, member)]
    if missing:
        raise ConfigError(
            f"task {name!r} ({cls.__module__}.{cls.__qualname__}) does not follow the task contract "
            f"(convssl.tasks.PretextTask): missing {', '.join(missing)}"
        )
