"""Patch masks for sparse (SparK) execution, and the context that carries one mask to
every layer of one encoder.

Legend: B batch, h/w a map's size, gh/gw the patch grid (input size / patch size).
A mask is boolean, True = visible (the encoder sees the patch), False = masked.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from convssl.errors import EncoderError

MIN_PATCHES = 4


def patch_grid(input_hw: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """The (gh, gw) patch grid for an input size, with clear errors for sizes SparK cannot take.

    The patch size is the encoder's total reduction, so the input must be a multiple of it
    (the coarsest map then has exactly one position per patch), and the grid needs at least
    ``MIN_PATCHES`` patches: with a single patch every image is all visible or all masked and
    nothing is learned (SparK's code accepts a 32 px input to a ResNet and silently does that).
    """
    h, w = input_hw
    if h % patch_size or w % patch_size:
        raise EncoderError(
            f"input size {h}x{w} is not a multiple of the encoder's total reduction {patch_size} "
            f"(SparK's patch size); use data.size={max(patch_size, (h // patch_size) * patch_size)} "
            f"or another multiple of {patch_size}"
        )
    grid = (h // patch_size, w // patch_size)
    if grid[0] * grid[1] < MIN_PATCHES:
        raise EncoderError(
            f"input size {h}x{w} with patch size {patch_size} gives a {grid[0]}x{grid[1]} patch grid; "
            f"SparK needs at least {MIN_PATCHES} patches to mask some and keep others. Use a larger "
            f"data.size (>= {2 * patch_size}) or an encoder with less reduction "
            "(e.g. encoder.small_input=true for 28-64 px images)"
        )
    return grid


def visible_count(num_patches: int, mask_ratio: float) -> int:
    """Patches kept visible per image: ``round(num_patches * (1 - ratio))`` as in SparK."""
    return round(num_patches * (1 - mask_ratio))


def random_patch_mask(batch_size: int, grid_hw: tuple[int, int], mask_ratio: float, *,
                      device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool mask [B, 1, gh, gw]; each image keeps ``visible_count`` patches chosen at random."""
    if not 0.0 <= mask_ratio < 1.0:
        raise EncoderError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    num_patches = grid_hw[0] * grid_hw[1]
    keep = visible_count(num_patches, mask_ratio)
    if keep < 1:
        raise EncoderError(
            f"mask_ratio {mask_ratio} leaves no visible patch out of {num_patches}; lower the ratio "
            "or use a larger input"
        )
    noise_BN = torch.rand(batch_size, num_patches, device=device, generator=generator)
    keep_idx = noise_BN.argsort(dim=1)[:, :keep]
    mask_BN = torch.zeros(batch_size, num_patches, dtype=torch.bool, device=device)
    mask_BN.scatter_(1, keep_idx, True)
    return mask_BN.view(batch_size, 1, *grid_hw)


def visible_sites(mask_Bhw: torch.Tensor, count: int | None = None) -> tuple[torch.Tensor, ...]:
    """``mask_Bhw.nonzero(as_tuple=True)``: the True positions in row-major order. With their
    ``count`` known, ``nonzero_static`` finds the same positions without the host-device
    sync ``nonzero`` needs to size its output (a wrong count would pad or cut them)."""
    if count is None:
        return mask_Bhw.nonzero(as_tuple=True)
    return torch.nonzero_static(mask_Bhw, size=count).unbind(1)


def visible_site_count(mask_B1hw: torch.Tensor, visible_per_image: int | None, hw: tuple[int, int]) -> int | None:
    """Visible positions in all of a map of size ``hw`` (a multiple of the mask's grid) when
    every image keeps ``visible_per_image`` patches; ``None`` when that is not known."""
    if visible_per_image is None:
        return None
    gh, gw = mask_B1hw.shape[-2:]
    return mask_B1hw.shape[0] * visible_per_image * (hw[0] // gh) * (hw[1] // gw)


def upsample_mask(mask_B1hw: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling of a patch mask to a map of size ``hw`` (a multiple of the grid)."""
    gh, gw = mask_B1hw.shape[-2:]
    h, w = hw
    if (h, w) == (gh, gw):
        return mask_B1hw
    if h % gh or w % gw:
        raise EncoderError(f"a {h}x{w} map is not a whole multiple of the {gh}x{gw} mask grid")
    return mask_B1hw.repeat_interleave(h // gh, dim=2).repeat_interleave(w // gw, dim=3)


class MaskContext:
    """The mask of the current forward, shared by all sparse layers of one encoder.

    One object per encoder, handed to every converted layer at conversion time (never a
    module-level global: a model loaded elsewhere works without anyone setting a global).
    ``SparseEncoder.forward`` sets the mask for the duration of one call with
    ``with ctx.use(mask_B1hw):`` and clears it afterwards, also on errors. With no mask
    set, every sparse layer computes exactly what its dense original computes.

    ``at(hw, dtype)`` gives the mask at a map size (cached per call): [B, 1, h, w].
    """

    def __init__(self):
        self.mask_B1hw: torch.Tensor | None = None
        self.visible_per_image: int | None = None
        self._cache: dict = {}

    @property
    def active(self) -> bool:
        return self.mask_B1hw is not None

    @contextmanager
    def use(self, mask_B1hw: torch.Tensor, visible_per_image: int | None = None):
        """``visible_per_image``: the number of visible patches every image of the mask has,
        when the caller knows it (SparK's own masks: ``visible_count``). The visible sites
        are then found with ``nonzero_static``, whose output size is known without reading
        the mask back: no host-device sync. Otherwise each scale costs one ``nonzero``."""
        if self.mask_B1hw is not None:
            raise RuntimeError("MaskContext is already in use: a sparse encoder's forward was re-entered")
        if mask_B1hw.dim() != 4 or mask_B1hw.shape[1] != 1:
            raise EncoderError(f"mask must be [B, 1, gh, gw], got shape {tuple(mask_B1hw.shape)}")
        self.mask_B1hw = mask_B1hw.bool()
        self.visible_per_image = visible_per_image
        self._cache = {}
        try:
            yield self
        finally:
            self.mask_B1hw = None
            self.visible_per_image = None
            self._cache = {}

    def at(self, hw: tuple[int, int], dtype: torch.dtype = torch.bool, where=None) -> torch.Tensor | None:
        """Mask [B, 1, h, w] for a map of size ``hw``; ``None`` for a 1x1 global vector (a pooled
        squeeze-excitation input), which is not a map and needs no mask. ``where``: a string or a
        function returning one, naming the layer in errors."""
        hw = tuple(hw)
        key = (hw, dtype)
        if key not in self._cache:
            grid = tuple(self.mask_B1hw.shape[-2:])
            if hw == (1, 1) and grid != (1, 1):
                self._cache[key] = None
            else:
                if hw[0] % grid[0] or hw[1] % grid[1]:
                    raise EncoderError(
                        f"{(where() if callable(where) else where) or 'a layer'} produced a {hw[0]}x{hw[1]} map, not a whole multiple of "
                        f"the {grid[0]}x{grid[1]} patch grid; SparK needs 'same'-padded layers whose "
                        "maps halve exactly (input size a multiple of the total reduction)"
                    )
                m = upsample_mask(self.mask_B1hw, hw)
                self._cache[key] = m if dtype == torch.bool else m.to(dtype)
        return self._cache[key]

    def sites(self, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Visible positions of a map of size ``hw``: (b, y, x) index tensors, row-major order
        (found once per scale and forward, shared by every layer at that scale)."""
        key = ("sites", tuple(hw))
        if key not in self._cache:
            count = visible_site_count(self.mask_B1hw, self.visible_per_image, hw)
            self._cache[key] = visible_sites(self.at(hw, torch.bool)[:, 0], count)
        return self._cache[key]

    def memo(self, key, make):
        """A per-forward cache for derived index structures (``make()`` runs once per forward)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def apply(self, x: torch.Tensor, channels_last: bool = False, where=None) -> torch.Tensor:
        """``x`` with masked positions set to 0 ([B, C, h, w], or [B, h, w, C] if channels_last)."""
        hw = x.shape[1:3] if channels_last else x.shape[-2:]
        m = self.at(hw, x.dtype, where)
        if m is None:
            return x
        return x * (m.permute(0, 2, 3, 1) if channels_last else m)
