"""Sparse execution of convnets under a patch mask (SparK's ``masked`` backend).

``SparseEncoder.from_encoder(encoder)`` converts an Encoder in place (parameter names
unchanged); ``encoder(x, mask_B1hw)`` then computes on visible patches only. The mask
reaches every layer through one ``MaskContext`` per encoder, never a global.
"""

from convssl.sparse.convert import to_dense, to_sparse
from convssl.sparse.encoder import SparseEncoder
from convssl.sparse.mask import MaskContext, patch_grid, random_patch_mask, upsample_mask, visible_count
from convssl.sparse.norm import masked_mean, sparse_batch_norm, sparse_group_norm

__all__ = [
    "SparseEncoder", "MaskContext", "to_sparse", "to_dense", "patch_grid", "random_patch_mask",
    "upsample_mask", "visible_count", "sparse_batch_norm", "sparse_group_norm", "masked_mean",
]
