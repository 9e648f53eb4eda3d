"""``ProjectedViews``: one network (encoder -> projector) on every multi-crop view, no
momentum copy, no negatives: the part Barlow Twins and VICReg share. Each adds its
``Config``, its batch check and its loss over the view pairs in ``forward``.

Legend: B per-rank batch, D embedding dim.
"""

from __future__ import annotations

import torch

from convssl.data.config import DataConfig
from convssl.encoders import Encoder
from convssl.errors import ConfigError
from convssl.heads.projection import projection_head
from convssl.tasks.base import TaskBase
from convssl.views.multicrop import check_crop_sizes, encode_by_resolution, multi_crop
from convssl.views.view_augment import ViewAugment


class ProjectedViews(TaskBase):
    """A subclass sets ``task_name`` (its recipe name, for messages) and a ``Config`` with
    ``proj_hidden_dim``, ``proj_out_dim``, ``proj_layers``, ``proj_batch_norm``, ``crops``,
    ``augment_on`` and ``augment``."""

    task_name: str

    def __init__(self, encoder: Encoder, cfg, data: DataConfig):
        super().__init__()
        self.cfg, self.data = cfg, data
        check_crop_sizes(cfg.crops, encoder.reductions[-1], self.task_name)
        self.views = ViewAugment(cfg.augment, cfg.augment_on, data)
        self.encoder = encoder
        self.projector = projection_head(encoder.feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim,
                                         num_layers=cfg.proj_layers, batch_norm=cfg.proj_batch_norm)

    def loader_transform(self):
        """The ``crops`` (2 global by default); with ``augment_on: worker`` also the photometric part."""
        return multi_crop(self.data, self.cfg.crops, augment=self.views.worker_transform())

    def embed_views(self, batch: dict) -> list[torch.Tensor]:
        """The ``[B, D]`` projections of the batch's views, in view order."""
        views = batch["img"]
        if not isinstance(views, (list, tuple)) or len(views) != self.cfg.crops.views:
            raise ConfigError(f"{self.task_name} expects batch['img'] to be a list of {self.cfg.crops.views} "
                              "views (loader_transform)")
        return encode_by_resolution(self._embed, [self.views.prepare(v) for v in views])

    def _embed(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder.pool(x_BCHW))
