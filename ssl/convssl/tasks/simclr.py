"""SimCLR: two augmented views, a projection head, NT-Xent over the global batch.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations".
The loader's workers crop and flip each view; the photometric part (colour jitter,
grayscale, blur, solarize) runs here on the training device (``augment_on: device``,
batched, per-sample parameters) or in the workers (``augment_on: worker``: the loader
applies it to each view after the crop). The linear probe and export use
``self.encoder`` (features before the head, as the paper evaluates).

Legend: B per-rank batch, C channels, H/W size, F encoder features, D projection dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from convssl.views.photometric_config import ColorAugConfig
from convssl.views.view_augment import ViewAugment
from convssl.data.config import DataConfig
from convssl.encoders import Encoder
from convssl.errors import ConfigError
from convssl.heads.projection import projection_head
from convssl.losses.nt_xent import nt_xent_logits
from convssl.tasks.base import TaskBase
from convssl.views.multicrop import MultiCropConfig, check_crop_sizes, encode_by_resolution, multi_crop, view_pairs


class SimCLR(TaskBase):
    """SimCLR pretext task: ``forward(batch) -> {"loss", "acc", "pos_sim"}``.

    ``batch["img"]`` is a list of two uint8 ``[B, C, H, W]`` views. The two views go
    through the encoder in one forward (one set of BN statistics over 2B images, as the
    paper's global BN sees both views). "loss" is the paper's NT-Xent (mean over anchors).
    With local crops (``crops``, SwAV's multi-crop, which its appendix also applies to
    SimCLR) the encoder runs once per resolution group and the loss, accuracy and positive
    similarity are means over the pairs (global view i, later view j), each pair's
    NT-Xent with its own 2N candidates.
    """

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """SimCLR hyper-parameters (the recipe's ``task:`` section).

        temperature: NT-Xent tau; the paper uses 0.1 on ImageNet (LARS, large batch), 0.5 on CIFAR.
        proj_hidden_dim, proj_out_dim, proj_layers: the head, 2048-2048-128 with 2 layers in
            SimCLR v1 (3 in v2).
        proj_batch_norm: BN after hidden layers (as the official code); proj_last_bn on the output.
        augment_on: ``device`` (batched here; the default) or ``worker`` (per sample in the
            loader workers, ``PhotometricView``). Measured (with the earlier torchvision v2
            worker) by benchmarks/augment_placement.py on the
            2-core dev CPU, one thread each: device 26.9k vs worker 4.6k images/s at 32 px gray
            (5.8x), 71 vs 27 images/s at 224 px RGB with blur (2.7x). A CPU-only run where the
            training process is already busy may still prefer ``worker`` (it runs in parallel
            processes); on a GPU the batched path costs next to nothing.
        augment: photometric strengths, the same for both views.
        crops: global and local crops (``convssl.views.multicrop.MultiCropConfig``); the
            default, 2 global crops, is the paper's two views.
        """

        temperature: float = 0.1
        proj_hidden_dim: int = 2048
        proj_out_dim: int = 128
        proj_layers: int = 2
        proj_batch_norm: bool = True
        proj_last_bn: bool = False
        augment_on: Literal["device", "worker"] = "device"
        augment: ColorAugConfig = field(default_factory=lambda: ColorAugConfig(
            brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5))
        crops: MultiCropConfig = field(default_factory=MultiCropConfig)

        def __post_init__(self):
            if self.temperature <= 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")
            if self.crops.views < 2:
                raise ValueError("simclr needs two views at least (crops)")

    @staticmethod
    def check_batch(cfg: SimCLR.Config, global_batch: int, world_size: int) -> None:
        """The negatives are the other images of the (global) batch: it needs two at least."""
        if global_batch < 2:
            raise ConfigError(f"simclr takes its negatives from the other images of the batch: "
                              f"data.batch_size {global_batch} has none; use 2 or more (the paper: 4096)")

    def __init__(self, encoder: Encoder, cfg: SimCLR.Config, data: DataConfig):
        super().__init__()
        self.cfg, self.data = cfg, data
        check_crop_sizes(cfg.crops, encoder.reductions[-1], "simclr")
        self.views = ViewAugment(cfg.augment, cfg.augment_on, data)
        self.encoder = encoder
        self.head = projection_head(encoder.feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim,
                                    num_layers=cfg.proj_layers, batch_norm=cfg.proj_batch_norm,
                                    last_bn=cfg.proj_last_bn)

    def loader_transform(self):
        """The ``crops`` (two by default); with ``augment_on: worker`` also the photometric part."""
        return multi_crop(self.data, self.cfg.crops, augment=self.views.worker_transform())

    def prepare(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        """uint8 view -> augmented (when on the device), normalized float input."""
        return self.views.prepare(img_BCHW)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        views = batch["img"]
        if not isinstance(views, (list, tuple)) or len(views) != self.cfg.crops.views:
            raise ConfigError(f"simclr expects batch['img'] to be a list of {self.cfg.crops.views} views "
                              "(loader_transform)")
        z = encode_by_resolution(self._project, [self.prepare(v) for v in views])
        pairs = view_pairs(self.cfg.crops)
        loss, acc, pos_sim = 0.0, 0.0, 0.0
        for i, j in pairs:
            logits, target = nt_xent_logits(z[i], z[j], self.cfg.temperature)
            loss = loss + F.cross_entropy(logits, target)
            with torch.no_grad():
                acc = acc + (logits.argmax(dim=1) == target).float().mean()
                pos_sim = pos_sim + F.cosine_similarity(z[i].float(), z[j].float(), dim=1).mean()
        # per-rank values: the trainer averages logged scalars over ranks when it logs
        return {"loss": loss / len(pairs), "acc": acc / len(pairs), "pos_sim": pos_sim / len(pairs)}

    def _project(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.pool(x_BCHW))
