"""SparseEncoder: an Encoder whose layers compute on the visible patches of a mask.

Legend: B batch, C channels, H/W input size, gh/gw patch grid, h/w a stage's size.
"""

from __future__ import annotations

import copy

import torch

from convssl.encoders import Encoder
from convssl.errors import EncoderError
from convssl.sparse.convert import to_dense, to_sparse
from convssl.sparse.mask import MaskContext, patch_grid


class SparseEncoder(Encoder):
    """An ``Encoder`` converted for SparK's sparse masked modeling (``masked`` backend).

    Build with ``SparseEncoder.from_encoder(encoder)``: the encoder's ``model`` is
    converted in place (its layers become sparse subclasses holding the same parameters),
    so ``self.model.state_dict()`` keys equal the dense model's and the weights export and
    load like a dense encoder's.

    forward(x_BCHW, mask_B1hw=None) -> stage maps [B, C_i, h_i, w_i]
        mask_B1hw: bool [B, 1, H/p, W/p], True = visible, p = ``patch_size`` (the total
        reduction). Input pixels of masked patches are zeroed, every layer sees the mask
        at its own scale, and stage maps come back with masked positions exactly 0.
        With no mask the encoder is exactly the dense one (so probes and feature
        extraction can use it unchanged).
    """

    ctx: MaskContext
    sparse_layers: dict

    @classmethod
    def from_encoder(cls, encoder: Encoder, *, sync_bn: bool = True,
                     elementwise: tuple[type, ...] = ()) -> "SparseEncoder":
        if isinstance(encoder, SparseEncoder):
            return encoder
        new = cls.__new__(cls)
        new.__dict__.update(encoder.__dict__)
        new.ctx = MaskContext()
        new.sparse_layers = to_sparse(new.model, new.ctx, sync_bn=sync_bn, elementwise=elementwise)
        return new

    @property
    def patch_size(self) -> int:
        return self.reductions[-1]

    def grid(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """Patch grid for an input size (clear errors for sizes SparK cannot take)."""
        return patch_grid(tuple(input_hw), self.patch_size)

    def forward(self, x_BCHW: torch.Tensor, mask_B1hw: torch.Tensor | None = None) -> list[torch.Tensor]:
        if mask_B1hw is None:
            return super().forward(x_BCHW)
        self.check_input(x_BCHW)
        grid = self.grid(x_BCHW.shape[-2:])
        if tuple(mask_B1hw.shape) != (x_BCHW.shape[0], 1, *grid):
            raise EncoderError(
                f"mask shape {tuple(mask_B1hw.shape)} does not fit input {tuple(x_BCHW.shape)}: "
                f"expected [{x_BCHW.shape[0]}, 1, {grid[0]}, {grid[1]}] (patch size {self.patch_size})"
            )
        self._check_still_sparse()
        with self.ctx.use(mask_B1hw):
            return super().forward(self.ctx.apply(x_BCHW, where="input"))

    def _check_still_sparse(self) -> None:
        for name, module in self.sparse_layers.items():
            if self.model.get_submodule(name) is not module:
                raise EncoderError(
                    f"layer {name} of the sparse encoder was replaced after conversion (by "
                    f"{type(self.model.get_submodule(name)).__name__}), e.g. by "
                    "nn.SyncBatchNorm.convert_sync_batchnorm; SparK's BatchNorm already syncs across "
                    "ranks, so do not convert the task's BatchNorms"
                )

    def dense_copy(self) -> Encoder:
        """A plain dense ``Encoder`` with a copy of these weights (same keys)."""
        enc = copy.deepcopy(self)
        to_dense(enc.model)
        dense = Encoder.__new__(Encoder)
        dense.__dict__.update({k: v for k, v in enc.__dict__.items() if k not in ("ctx", "sparse_layers")})
        return dense
