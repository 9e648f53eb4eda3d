"""Sparse execution of convnets under a patch mask (SparK's ``masked`` backend).

``SparseEncoder(encoder)`` wraps an Encoder by composition (a sparse twin sharing its
parameters; the encoder itself stays dense); ``sparse(x, mask_B1hw)`` computes on visible
patches only. The mask reaches every layer through one ``MaskContext`` per encoder, never
a global.
"""

from convssl.sparse.convert import SparseView, sparse_view
from convssl.sparse.encoder import SparseEncoder
from convssl.sparse.mask import MaskContext, patch_grid, random_patch_mask, upsample_mask, visible_count
from convssl.sparse.norm import masked_mean, sparse_batch_norm, sparse_group_norm

__all__ = [
    "SparseEncoder", "SparseView", "sparse_view", "MaskContext", "patch_grid", "random_patch_mask",
    "upsample_mask", "visible_count", "sparse_batch_norm", "sparse_group_norm", "masked_mean",
]
