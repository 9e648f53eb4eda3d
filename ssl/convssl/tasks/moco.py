"""MoCo v2: momentum key encoder, a queue of negative keys, InfoNCE, shuffle-BN.

He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning";
Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning" (v2: MLP head,
blur, cosine schedule).

Design decisions:
- EMA placement: the key encoder and head are updated in ``after_step`` (right after the
  optimizer step), as in the paper's Algorithm 1 and the trainer's order
  (step -> EMA). MoCo's code does it at the start of the next forward, which is the same
  sequence of updates except that a checkpoint written between the two would miss the last
  one: here a checkpoint after step t already holds the key encoder of step t, so resume
  is exact. ``momentum_schedule: cosine`` raises m to 1 over training (BYOL / MoCo v3).
- Queue: registered buffers ``queue`` [K, D] (normalized keys), ``queue_ptr`` and
  ``steps`` (seeds the shuffle), so ``state_dict`` holds them and a resume continues with
  the same negatives and permutations. Keys of all ranks are enqueued, oldest dropped;
  K need not be a multiple of the batch (the write wraps around).
- Shuffle-BN: in DDP the key batch is shuffled across ranks (``batch_shuffle``) with a
  permutation all ranks derive from ``shuffle_seed`` and ``steps``. ``bn_groups`` splits
  each rank's batch into groups with separate BN statistics, for both the queries
  (contiguous groups) and the keys (shuffled groups): one process with ``bn_groups: G``
  computes what G ranks would. With one process and ``bn_groups: 1`` BN sees the whole
  batch for queries and keys alike, and nothing hides the positive: use ``bn_groups`` >= 2
  (MoCo's CIFAR demo splits into 8). Encoders without BN need neither.
- Export: ``self.encoder`` is the online (query) encoder, the one the paper evaluates;
  ``encoder_momentum`` is the key encoder.

Legend: B per-rank batch, N global batch, F encoder features, D embedding dim, K queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from convssl import dist
from convssl.views.photometric_config import ColorAugConfig
from convssl.views.view_augment import ViewAugment
from convssl.batch_shuffle import grouped_forward, shuffled_forward
from convssl.data.config import DataConfig
from convssl.views.crop_views import crop_views
from convssl.encoders import Encoder
from convssl.errors import ConfigError
from convssl.heads.projection import projection_head
from convssl.losses.info_nce import info_nce_logits
from convssl.momentum import ema_update, momentum_at, momentum_copy
from convssl.tasks.base import TaskBase


class MoCo(TaskBase):
    """MoCo v2 pretext task: ``forward(batch) -> {"loss", "acc", "momentum"}``.

    View 1 is the query, view 2 the key. ``after_step`` moves the momentum encoder.
    """

    # Shuffle-BN keeps BatchNorm per rank on purpose (global statistics would let the
    # positive key leak): the trainer must not convert it to nn.SyncBatchNorm.
    manages_batchnorm_sync = True

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """MoCo v2 hyper-parameters (the recipe's ``task:`` section); defaults from the v2 paper.

        queue_size: K negatives (65536 on ImageNet; 4096 in the CIFAR demo).
        momentum: key encoder EMA m (0.999; the CIFAR demo uses 0.99).
        momentum_schedule: ``constant`` (MoCo) or ``cosine`` (m -> 1 over training).
        temperature: InfoNCE tau (0.2 for v2; 0.1 in the CIFAR demo).
        proj_hidden_dim, proj_out_dim, proj_layers, proj_batch_norm: v2's head is
            2048-2048-128, 2 layers, no BN.
        bn_groups: BN groups per rank (see the module notes); 1 with 8+ GPUs as in the paper.
        shuffle_bn: shuffle the keys across ranks/groups before the key encoder.
        shuffle_seed: base seed of the shared shuffle permutation.
        augment_on, augment: as in SimCLR; defaults are MoCo v2's recipe with blur for 224 px.
        """

        queue_size: int = 65536
        momentum: float = 0.999
        momentum_schedule: Literal["constant", "cosine"] = "constant"
        temperature: float = 0.2
        proj_hidden_dim: int = 2048
        proj_out_dim: int = 128
        proj_layers: int = 2
        proj_batch_norm: bool = False
        bn_groups: int = 1
        shuffle_bn: bool = True
        shuffle_seed: int = 0
        augment_on: Literal["device", "worker"] = "device"
        augment: ColorAugConfig = field(default_factory=lambda: ColorAugConfig(blur_p=0.5))

        def __post_init__(self):
            if self.queue_size < 1:
                raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
            if not 0.0 <= self.momentum <= 1.0:
                raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
            if self.temperature <= 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")
            if self.bn_groups < 1:
                raise ValueError(f"bn_groups must be >= 1, got {self.bn_groups}")

    @staticmethod
    def check_batch(cfg: MoCo.Config, global_batch: int, world_size: int) -> None:
        """Each step enqueues the global batch of keys, so the queue must hold it; each BN
        group needs two samples per rank for batch statistics."""
        if global_batch > cfg.queue_size:
            raise ConfigError(f"moco: task.queue_size {cfg.queue_size} is smaller than the global batch "
                              f"data.batch_size {global_batch}; raise task.queue_size")
        per_rank = global_batch // max(1, world_size)
        if cfg.bn_groups > 1 and per_rank < 2 * cfg.bn_groups:
            raise ConfigError(f"moco: task.bn_groups {cfg.bn_groups} needs at least {2 * cfg.bn_groups} samples "
                              f"per process, the batch gives {per_rank}; lower task.bn_groups or raise data.batch_size")

    def __init__(self, encoder: Encoder, cfg: MoCo.Config, data: DataConfig):
        super().__init__()
        self.cfg, self.data = cfg, data
        self.views = ViewAugment(cfg.augment, cfg.augment_on, data)
        self.encoder = encoder
        self.head = projection_head(encoder.feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim,
                                    num_layers=cfg.proj_layers, batch_norm=cfg.proj_batch_norm)
        self.encoder_momentum = momentum_copy(self.encoder)
        self.head_momentum = momentum_copy(self.head)
        queue_KD = F.normalize(torch.randn(cfg.queue_size, cfg.proj_out_dim), dim=1)
        self.register_buffer("queue", queue_KD)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # Host-side mirrors, so a step reads no device scalar: the shuffle seed needs the
        # step count (restored from the ``steps`` buffer on load), the log the momentum.
        self._steps = 0
        self.register_load_state_dict_post_hook(_mirror_steps)
        self._momentum = cfg.momentum
        self.register_buffer("momentum_now", torch.tensor(float(cfg.momentum)), persistent=False)

    # ---- views -------------------------------------------------------------------------
    def loader_transform(self):
        """Two crops per image; with ``augment_on: worker`` also the photometric part."""
        return crop_views(self.data, views=2, augment=self.views.worker_transform())

    def prepare(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        """uint8 view -> augmented (when on the device), normalized float input."""
        return self.views.prepare(img_BCHW)

    # ---- the two encoders --------------------------------------------------------------
    def _query(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.pool(x_BCHW))

    def _key(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.head_momentum(self.encoder_momentum.pool(x_BCHW))

    @torch.no_grad()
    def keys(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Normalized keys ``[B, D]`` from the momentum encoder, shuffle-BN applied."""
        if self.cfg.shuffle_bn:
            seed = self.cfg.shuffle_seed * 1_000_003 + self._steps
            k = shuffled_forward(self._key, x_BCHW, groups=self.cfg.bn_groups, seed=seed)
        else:
            k = grouped_forward(self._key, x_BCHW, self.cfg.bn_groups)
        return F.normalize(k.float(), dim=1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        views = batch["img"]
        if not isinstance(views, (list, tuple)) or len(views) != 2:
            raise ConfigError("moco expects batch['img'] to be a list of 2 views (loader_transform)")
        x_q, x_k = self.prepare(views[0]), self.prepare(views[1])
        q_BD = grouped_forward(self._query, x_q, self.cfg.bn_groups)
        k_BD = self.keys(x_k)
        # a copy: the queue is updated below, and the logits' backward needs this version
        logits = info_nce_logits(q_BD, k_BD, self.queue.clone(), self.cfg.temperature)
        target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, target)
        if self.training:
            self.enqueue(dist.all_gather_no_grad(k_BD))
            self.steps += 1
            self._steps += 1
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == 0).float().mean()
        return {"loss": loss, "acc": acc, "momentum": self.momentum_now.clone()}

    @torch.no_grad()
    def enqueue(self, keys_ND: torch.Tensor) -> None:
        """Write the newest keys over the oldest ones, then advance the pointer (mod K)."""
        K, n = self.queue.shape[0], keys_ND.shape[0]
        if n > K:
            raise ConfigError(f"moco queue_size {K} is smaller than the global batch {n}; raise task.queue_size")
        idx = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % K
        self.queue[idx] = keys_ND.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % K)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA of the online encoder and head into the momentum ones (after the optimizer step)."""
        self._momentum = momentum_at(step, total_steps, self.cfg.momentum, self.cfg.momentum_schedule)
        self.momentum_now.fill_(self._momentum)  # a device fill, no host-to-device copy
        ema_update(self.encoder, self.encoder_momentum, self._momentum)
        ema_update(self.head, self.head_momentum, self._momentum)


def _mirror_steps(module: MoCo, incompatible_keys) -> None:
    """After ``load_state_dict``: the host step count follows the loaded ``steps`` buffer
    (one read at load time, none per step)."""
    module._steps = int(module.steps)
