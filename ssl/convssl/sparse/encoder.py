"""SparseEncoder: sparse execution of an Encoder under a patch mask, by composition.

Legend: B batch, C channels, H/W input size, gh/gw patch grid, h/w a stage's size.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from convssl.encoders import Encoder
from convssl.errors import EncoderError
from convssl.sparse import backends
from convssl.sparse.convert import sparse_view
from convssl.sparse.layers import is_channels_last
from convssl.sparse.mask import MaskContext, patch_grid


class SparseEncoder(nn.Module):
    """Runs a dense ``Encoder`` sparsely under a patch mask, without changing it.

    Holds, by composition, ``encoder`` (the dense Encoder: a registered submodule, so this
    module's parameters and ``state_dict`` are the encoder's) and ``view``, its sparse twin
    (``convert.sparse_view``; ``model`` is the twin's root). The twin's layers hold the very
    same ``Parameter`` and buffer objects under the same names, so gradients, optimizer
    state and exports are the dense encoder's, and ``encoder`` itself still runs dense (a
    dense task and a sparse task can share it). The twin lives in the ``SparseView``, which
    is not a module: that keeps it out of every ``state_dict`` and ``.to()``, and it needs
    neither (it shares the dense tensors, and follows the dense modules' train/eval mode at
    every call). The stages (``stages``, ``reductions``, ``channels``, ``in_chans``) are
    the encoder's; the twin runs them through ``Encoder.stage_maps``. A task that already
    registers ``encoder`` keeps this object out of its own submodules, so that its
    ``state_dict`` lists each weight once (as ``SparK`` does).

    forward(x_BCHW, mask_B1hw) -> stage maps [B, C_i, h_i, w_i]
        mask_B1hw: bool [B, 1, H/p, W/p], True = visible, p = ``patch_size`` (the total
        reduction). Input pixels of masked patches are zeroed, every layer sees the mask
        at its own scale, and stage maps come back with masked positions exactly 0.

    backend: ``masked`` (dense ops times the mask, the reference), ``gather`` (block-sparse
        tiles), ``spconv`` (sparse convolution) or ``auto`` (per layer the fastest of them
        computing the same function, timed at the first forward of each input shape; the
        choices live in ``backend_choices``, {shape key: {layer path: backend}}, which a
        caller may save and restore so that a resumed run does not measure again).
        See ``convssl.sparse.backends``.
    """

    def __init__(self, encoder: Encoder, *, sync_bn: bool = True, elementwise: tuple[type, ...] = (),
                 backend: str = "masked"):
        super().__init__()
        if not isinstance(encoder, Encoder):
            raise EncoderError(f"SparseEncoder wraps a dense Encoder, not a {type(encoder).__name__}")
        self.encoder = encoder
        self.ctx = MaskContext()
        self.view = sparse_view(encoder.model, self.ctx, sync_bn=sync_bn, elementwise=elementwise)
        backends.check_backend(backend)
        self.backend = backend
        self.backend_choices: dict[str, dict[str, str]] = {}
        self.choice_table: list[dict] = []  # rows of the last auto measurement
        self.measurements = 0  # how many times auto has timed the layers
        self._applied: str | None = None
        if backend != "auto":
            self.layer_backends = backends.assign(self.view, {p: backend for p in backends.windowed_layers(self.view)})

    @property
    def model(self) -> nn.Module:
        """The sparse twin of ``encoder.model`` (same submodule names, same tensors)."""
        return self.view.model

    @property
    def stages(self):
        return self.encoder.stages

    @property
    def reductions(self) -> list[int]:
        return self.encoder.reductions

    @property
    def channels(self) -> list[int]:
        return self.encoder.channels

    @property
    def in_chans(self) -> int:
        return self.encoder.in_chans

    @property
    def patch_size(self) -> int:
        return self.reductions[-1]

    def grid(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """Patch grid for an input size (clear errors for sizes SparK cannot take)."""
        return patch_grid(tuple(input_hw), self.patch_size)

    def forward(self, x_BCHW: torch.Tensor, mask_B1hw: torch.Tensor,
                visible_per_image: int | None = None) -> list[torch.Tensor]:
        """Stage maps of the masked input. ``visible_per_image``: the visible patches every
        image of ``mask_B1hw`` has, when known (then no host-device sync; see ``MaskContext.use``)."""
        self.encoder.check_input(x_BCHW)
        grid = self.grid(x_BCHW.shape[-2:])
        if tuple(mask_B1hw.shape) != (x_BCHW.shape[0], 1, *grid):
            raise EncoderError(
                f"mask shape {tuple(mask_B1hw.shape)} does not fit input {tuple(x_BCHW.shape)}: "
                f"expected [{x_BCHW.shape[0]}, 1, {grid[0]}, {grid[1]}] (patch size {self.patch_size})"
            )
        self._check_same_layers()
        self.view.follow_modes()
        with self.ctx.use(mask_B1hw, visible_per_image):
            x = self.ctx.apply(x_BCHW, where="input")
            if self.backend == "auto":
                self._auto_choose(x, mask_B1hw)
            return self.encoder.stage_maps(self.model, x)

    @staticmethod
    def shape_key(x_BCHW: torch.Tensor, mask_B1hw: torch.Tensor) -> str:
        """The key of ``backend_choices``: input shape, dtype, device type and memory layout."""
        layout = "cl" if is_channels_last(x_BCHW) else "cf"
        return f"{'x'.join(map(str, x_BCHW.shape))}/{str(x_BCHW.dtype).removeprefix('torch.')}/{x_BCHW.device.type}/{layout}"

    def _auto_choose(self, x: torch.Tensor, mask_B1hw: torch.Tensor) -> None:
        from convssl.sparse.backends import auto

        key = self.shape_key(x, mask_B1hw)
        if key not in self.backend_choices and not torch.is_grad_enabled():
            # A pass without gradients (pictures, evaluation) cannot time backward, and its
            # batch is not the training batch: reuse the choices of a shape that differs only
            # in batch size, else run the reference for this call and decide at a training step.
            reuse = self._same_shape_but_batch(key)
            choices = self.backend_choices[reuse] if reuse is not None else {}
            if self._applied != reuse:
                self.layer_backends = backends.assign(self.view, choices)
                self._applied = reuse
            return
        if key not in self.backend_choices:
            layers = backends.windowed_layers(self.view)
            backends.assign(self.view, {})
            inputs, hooks = {}, []
            for path, layer in layers.items():
                hooks.append(layer.register_forward_pre_hook(
                    lambda mod, args, path=path: inputs.__setitem__(path, args[0].detach())))
            try:
                for twin, _ in self.view.twins:
                    twin.training = False  # no running-statistics update while recording
                with torch.no_grad():
                    self.encoder.stage_maps(self.model, x)
            finally:
                for h in hooks:
                    h.remove()
                self.view.follow_modes()
            self.backend_choices[key], self.choice_table = auto.choose(inputs, layers, self.ctx)
            self.measurements += 1
        if self._applied != key:
            self.layer_backends = backends.assign(self.view, self.backend_choices[key])
            self._applied = key

    def _same_shape_but_batch(self, key: str) -> str | None:
        """A measured key equal to ``key`` but for the batch size (the largest batch wins)."""
        rest = key.split("x", 1)[1]
        found = [k for k in self.backend_choices if k.split("x", 1)[1] == rest]
        return max(found, key=lambda k: int(k.split("x", 1)[0])) if found else None

    def _check_same_layers(self) -> None:
        stale = self.view.stale_layer(self.encoder.model)
        if stale is not None:
            now = type(self.encoder.model.get_submodule(stale)).__name__
            raise EncoderError(
                f"layer {stale} of the encoder was replaced (by {now}) after its sparse twin was made, "
                "e.g. by nn.SyncBatchNorm.convert_sync_batchnorm; SparK's BatchNorm already syncs "
                "across ranks, so do not convert the task's BatchNorms (or build the task again)"
            )
