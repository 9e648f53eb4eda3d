"""SparK: sparse and hierarchical masked modeling for convnets.

Tian et al., "Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked
Modeling", ICLR 2023. Random patches are masked, the encoder runs on the visible ones
only (sparse layers, ``convssl.sparse``), each stage's sparse map is densified (norm,
learned mask token, projection) and a light UNet-like decoder predicts the pixels of the
masked patches, normalised per patch.

Legend: B batch, C channels, H/W input size, p patch size (the encoder's total reduction),
gh/gw patch grid, N = gh*gw patches, h/w a stage's size; masks are bool, True = visible.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from convssl import dist
from convssl.data.config import DataConfig
from convssl.views.normalize import denormalize, normalize
from convssl.views.crop_views import crop_views
from convssl.encoders import Encoder
from convssl.errors import ConfigError, EncoderError
from convssl.sparse import SparseEncoder, random_patch_mask, sparse_batch_norm, upsample_mask
from convssl.sparse.mask import visible_count, visible_site_count, visible_sites
from convssl.sparse.convert import resolve_types
from convssl.sparse.norm import compute_dtype
from convssl.tasks.base import TaskBase

TARGET_EPS = 1e-6  # SparK: target patch normalised by sqrt(unbiased var + 1e-6)


# ---- loss -----------------------------------------------------------------------------
def patchify(x_BCHW: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C], patches in row-major grid order."""
    return rearrange(x_BCHW, "b c (gh p) (gw q) -> b (gh gw) (p q c)", p=p, q=p)


def unpatchify(x_BND: torch.Tensor, p: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    return rearrange(x_BND, "b (gh gw) (p q c) -> b c (gh p) (gw q)", gh=grid_hw[0], gw=grid_hw[1], p=p, q=p)


def patch_targets(x_BCHW: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-patch normalised targets [B, N, D] and the patch mean and std [B, N, 1]."""
    patches = patchify(x_BCHW.to(compute_dtype(x_BCHW.dtype)), p)
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True, unbiased=True) + TARGET_EPS).sqrt()
    return (patches - mean) / std, mean, std


def masked_patch_loss(pred_BCHW: torch.Tensor, x_BCHW: torch.Tensor, mask_B1hw: torch.Tensor,
                      p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SparK's loss: MSE to per-patch normalised pixels, averaged over each patch's values,
    then over the masked patches of the batch. Returns (loss, per-patch errors [B, N])."""
    target, _, _ = patch_targets(x_BCHW, p)
    err_BN = (patchify(pred_BCHW.to(target.dtype), p) - target).pow(2).mean(dim=-1)
    masked_BN = (~mask_B1hw.bool()).flatten(1).to(err_BN.dtype)
    return (err_BN * masked_BN).sum() / masked_BN.sum().clamp(min=1.0), err_BN


# ---- densify and decoder --------------------------------------------------------------
class _SyncedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose statistics are summed over ranks when distributed (SparK's decoder
    uses SyncBatchNorm); works on CPU/gloo, where nn.SyncBatchNorm does not."""

    def forward(self, x):
        if not (self.training and dist.is_enabled()):
            return super().forward(x)
        ones = torch.ones(x.shape[0], 1, *x.shape[-2:], dtype=torch.bool, device=x.device)
        return sparse_batch_norm(self, x, ones, sync=True, sites=visible_sites(ones[:, 0], ones.numel()))


class UpBlock(nn.Module):
    """2x upsampling: ConvTranspose 4x4/2, then conv3x3-BN-ReLU6-conv3x3-BN (SparK's UNetBlock)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in, kernel_size=4, stride=2, padding=1)
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, padding=1, bias=False), _SyncedBatchNorm2d(c_in), nn.ReLU6(),
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), _SyncedBatchNorm2d(c_out),
        )

    def forward(self, x):
        return self.conv(self.up(x))


class LightDecoder(nn.Module):
    """log2(p) upsampling blocks with channels halving from ``width``, a 1x1 conv to pixels.

    forward(maps) where ``maps[k]`` is the densified map at reduction p / 2**k (k = 0 the
    coarsest, always present); each is added where the decoder reaches its scale.
    """

    def __init__(self, patch_size: int, width: int, out_chans: int):
        super().__init__()
        self.num_blocks = int(math.log2(patch_size))
        self.channels = [width // 2**k for k in range(self.num_blocks + 1)]
        if self.channels[-1] < 1:
            raise ConfigError(f"task.decoder_width={width} is too small for {self.num_blocks} halvings; "
                              f"use at least {2 ** self.num_blocks}")
        self.blocks = nn.ModuleList(UpBlock(a, b) for a, b in zip(self.channels[:-1], self.channels[1:]))
        self.proj = nn.Conv2d(self.channels[-1], out_chans, kernel_size=1)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, maps: dict[int, torch.Tensor]) -> torch.Tensor:
        x = maps[0]
        for k, block in enumerate(self.blocks, start=1):
            x = block(x)
            if k in maps:
                x = x + maps[k]
        return self.proj(x)


class Densify(nn.Module):
    """Per stage, coarsest first: norm over visible positions, the learned mask token
    written into masked positions, a projection to the decoder's width at that scale
    (1x1 at the coarsest, identity there when widths match; 3x3 elsewhere)."""

    def __init__(self, channels: list[int], widths: list[int], norm: str, sync_bn: bool):
        super().__init__()
        self.norm_kind, self.sync_bn = norm, sync_bn
        # SparK's densify LayerNorm uses eps 1e-6 (its public code: LayerNorm(..., eps=1e-6))
        make_norm = {"bn": nn.BatchNorm2d, "ln": lambda c: nn.LayerNorm(c, eps=1e-6),
                     "none": lambda c: nn.Identity()}[norm]
        self.norms = nn.ModuleList(make_norm(c) for c in channels)
        self.tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1)) for c in channels)
        for t in self.tokens:
            nn.init.trunc_normal_(t, std=0.02, a=-0.02, b=0.02)
        self.projs = nn.ModuleList()
        for i, (c, w) in enumerate(zip(channels, widths)):
            k = 1 if i == 0 else 3
            self.projs.append(nn.Identity() if i == 0 and c == w else nn.Conv2d(c, w, k, padding=k // 2))

    def forward(self, feats: list[torch.Tensor], mask_B1hw: torch.Tensor,
                visible_per_image: int | None = None) -> list[torch.Tensor]:
        """``visible_per_image``: every image's visible patch count, when known (no host sync)."""
        out = []
        for f, norm, token, proj in zip(feats, self.norms, self.tokens, self.projs):
            m = upsample_mask(mask_B1hw, f.shape[-2:])
            if self.norm_kind == "bn":
                count = visible_site_count(mask_B1hw, visible_per_image, f.shape[-2:])
                f = sparse_batch_norm(norm, f, m, sync=self.sync_bn, sites=visible_sites(m[:, 0], count))
            elif self.norm_kind == "ln":  # per position over channels: visible ones are unaffected by masked
                f = norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            f = torch.where(m, f, token.to(f.dtype))
            out.append(proj(f))
        return out


# ---- the task -------------------------------------------------------------------------
class SparK(TaskBase):
    """Sparse masked modeling (Tian et al., ICLR 2023) for any convnet Encoder.

    Composition: ``self.encoder`` is the dense ``Encoder`` handed in, registered and never
    changed (its classes, outputs and ``state_dict`` keys stay the original model's, so it
    exports and probes as is, and another task may share it); ``self.sparse_encoder`` is a
    ``convssl.sparse.SparseEncoder`` over it whose sparse layers hold the same ``Parameter``
    objects, kept out of ``_modules`` so each weight appears once in ``state_dict``.

    forward(batch) -> {"loss"}: batch["img"] a list of one uint8 [B, C, H, W]; an optional batch["mask"]
    bool [B, 1, gh, gw] (True = visible) replaces the random mask (tests, pictures).
    pictures(batch) -> [3, H', W'] in 0..1: rows of input, masked input, reconstruction,
    reconstruction with the visible patches pasted back.
    """

    # Its sparse BatchNorms synchronise over ranks themselves (task.sync_bn): the trainer
    # must not turn them into nn.SyncBatchNorm, which would count masked positions.
    manages_batchnorm_sync = True

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """SparK hyper-parameters; defaults from the paper and its public code.

        mask_ratio: fraction of patches masked per image (paper sec. 4: 60%).
        decoder_width: channels of the decoder's coarsest block (SparK: 768), halved per block.
        densify_norm: norm before the mask token: "bn" (BN nets), "ln" (LN nets, ConvNeXt),
            "none", or "auto" (LN if the encoder has LayerNorm and no BatchNorm, else BN).
        backend: sparse execution of the encoder's conv/pool layers (``convssl.sparse.backends``):
            "masked" = dense ops times the mask (SparK's own, the reference), "gather" =
            block-sparse tiles (SBNet), "spconv" = sparse convolution (the ``spconv``
            package), "auto" = per layer the fastest of them, timed at start-up; they
            compute the same function, so a checkpoint resumes under any of them.
        sync_bn: sparse BatchNorm statistics over all ranks when distributed (SparK: SyncBN).
        elementwise: extra per-position layer types of a custom encoder ("pkg.mod:Class").
        """

        mask_ratio: float = 0.6
        decoder_width: int = 768
        densify_norm: Literal["auto", "bn", "ln", "none"] = "auto"
        backend: Literal["masked", "gather", "spconv", "auto"] = "masked"
        sync_bn: bool = True
        elementwise: tuple[str, ...] = ()

        def __post_init__(self):
            if not 0.0 <= self.mask_ratio < 1.0:
                raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
            if self.decoder_width < 1:
                raise ValueError(f"decoder_width must be positive, got {self.decoder_width}")

    def __init__(self, encoder: Encoder, cfg: Config | None = None, data: DataConfig | None = None):
        super().__init__()
        cfg = cfg or SparK.Config()
        data = data or DataConfig(size=encoder.input_size, channels=encoder.in_chans,
                                  mean=(0.5,) * encoder.in_chans, std=(0.5,) * encoder.in_chans)
        self.cfg, self.data = cfg, data
        if data.channels != encoder.in_chans:
            raise ConfigError(f"data.channels={data.channels} but the encoder takes {encoder.in_chans} "
                              f"channels; set encoder.in_chans={data.channels}")
        self.encoder = encoder
        self.__dict__["sparse_encoder"] = SparseEncoder(encoder, sync_bn=cfg.sync_bn, backend=cfg.backend,
                                                        elementwise=resolve_types(cfg.elementwise))
        self.patch_size = p = self.sparse_encoder.patch_size
        self.grid_hw = self.sparse_encoder.grid((data.size, data.size))
        self._check_reductions()

        # decoder width at reduction r: decoder_width / (p / r); stages listed coarsest first
        self._levels = [int(math.log2(p // r)) for r in reversed(self.encoder.reductions)]
        self.decoder = LightDecoder(p, cfg.decoder_width, encoder.in_chans)
        widths = [self.decoder.channels[k] for k in self._levels]
        self.densify = Densify(list(reversed(self.encoder.channels)), widths, self._densify_norm(), cfg.sync_bn)

    # auto's per-layer choices travel in the checkpoint, so a resume does not measure again
    def get_extra_state(self) -> torch.Tensor:
        """``auto``'s per-layer choices, as UTF-8 JSON bytes in a uint8 tensor: a state_dict
        stays all tensors (safe ``weights_only`` loading, finiteness checks, EMA copies)."""
        doc = json.dumps({"backend_choices": dict(self.sparse_encoder.backend_choices)}, sort_keys=True)
        return torch.tensor(list(doc.encode()), dtype=torch.uint8)

    def set_extra_state(self, state: torch.Tensor) -> None:
        doc = json.loads(bytes(state.tolist()).decode()) if torch.is_tensor(state) and state.numel() else {}
        self.sparse_encoder.backend_choices.update(doc.get("backend_choices", {}))
        self.sparse_encoder._applied = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before the backends carry no choices: load them as "none stored"
        state_dict.setdefault(prefix + "_extra_state", torch.zeros(0, dtype=torch.uint8))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_reductions(self):
        p = self.patch_size
        if p & (p - 1) or p < 2:
            raise EncoderError(f"SparK's decoder upsamples by 2 per block: the encoder's total "
                               f"reduction must be a power of two >= 2, got {p}")
        bad = [r for r in self.encoder.reductions if p % r or (p // r) & (p // r - 1)]
        if bad:
            raise EncoderError(f"stage reductions {self.encoder.reductions} are not powers of two apart "
                               f"({bad}); give encoder.stages explicitly")

    def _densify_norm(self) -> str:
        if self.cfg.densify_norm != "auto":
            return self.cfg.densify_norm
        mods = list(self.encoder.model.modules())
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods)
        has_ln = any(isinstance(m, nn.LayerNorm) for m in mods)
        return "ln" if has_ln and not has_bn else "bn"

    # ---- pieces, usable alone -----------------------------------------------------------
    def make_mask(self, batch_size: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random bool mask [B, 1, gh, gw]: per image, round(N * (1 - ratio)) visible patches."""
        return random_patch_mask(batch_size, self.grid_hw, self.cfg.mask_ratio, device=device, generator=generator)

    def reconstruct(self, x_BCHW: torch.Tensor, mask_B1hw: torch.Tensor,
                    visible_per_image: int | None = None) -> torch.Tensor:
        """Prediction [B, C, H, W] (per-patch normalised pixel space) from a normalised input.
        ``visible_per_image``: every image's visible patch count, when known (no host sync)."""
        x_masked = x_BCHW * upsample_mask(mask_B1hw, x_BCHW.shape[-2:]).to(x_BCHW.dtype)
        feats = self.sparse_encoder(x_masked, mask_B1hw, visible_per_image)  # fine to coarse, masked positions 0
        dense = self.densify(list(reversed(feats)), mask_B1hw, visible_per_image)
        return self.decoder(dict(zip(self._levels, dense)))

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """(normalised input, mask, visible patches per image when the mask is our own)."""
        x = normalize(batch["img"][0], self.data.mean, self.data.std)
        grid = self.sparse_encoder.grid(x.shape[-2:])
        mask, visible = batch.get("mask"), None
        if mask is None:
            mask = random_patch_mask(x.shape[0], grid, self.cfg.mask_ratio, device=x.device)
            visible = visible_count(grid[0] * grid[1], self.cfg.mask_ratio)
        return x, mask.to(x.device).bool(), visible

    # ---- task contract ------------------------------------------------------------------
    def loader_transform(self):
        return crop_views(self.data)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        x, mask, visible = self._inputs(batch)
        pred = self.reconstruct(x, mask, visible)
        loss, _ = masked_patch_loss(pred, x, mask, self.patch_size)
        return {"loss": loss}

    @torch.no_grad()
    def pictures(self, batch: dict, max_images: int = 8) -> torch.Tensor:
        """Input, masked input, reconstruction, reconstruction + visible patches: [3, H', W'].

        Runs in eval mode (running BN statistics) on a fixed mask: no buffer changes, and no
        cross-rank reduction, since the trainer calls this on the main rank only.
        """
        from torchvision.utils import make_grid

        img = batch["img"][0][:max_images]
        gen = torch.Generator().manual_seed(0)
        mask = self.make_mask(img.shape[0], generator=gen).to(img.device)
        was_training = self.training
        self.eval()
        try:
            x, mask, visible = self._inputs({"img": [img], "mask": mask})
            pred = self.reconstruct(x, mask, visible)
        finally:
            self.train(was_training)

        p = self.patch_size
        _, mean, std = patch_targets(x, p)
        rec = unpatchify(patchify(pred.float(), p) * std + mean, p, mask.shape[-2:])
        m = upsample_mask(mask, x.shape[-2:]).float()
        rows = [x, x * m, rec, rec * (1 - m) + x * m]
        pics = [denormalize(r.float(), self.data.mean, self.data.std) for r in rows]
        pics = [pic.expand(-1, 3, -1, -1) if pic.shape[1] == 1 else pic for pic in pics]
        return make_grid(torch.cat(pics), nrow=img.shape[0], padding=2, pad_value=1.0).clamp(0, 1).cpu()
