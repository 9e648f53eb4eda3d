"""Sample dicts -> one batch dict (the DataLoader's ``collate_fn``).

Legend: B batch.
"""

from __future__ import annotations

import torch

from convssl.data.read_error import ShardReadError


def collate_samples(samples: list[dict]) -> dict:
    """Batch sample dicts: tensors stack to (B, ...), lists of tensors (views) stack per
    view, ints become an int64 tensor (B,), strings a list."""
    batch = {}
    for name, first in samples[0].items():
        values = [sample[name] for sample in samples]
        if isinstance(first, torch.Tensor):
            batch[name] = _stack(values, name)
        elif isinstance(first, (list, tuple)):
            batch[name] = [_stack(list(views), name) for views in zip(*values)]
        elif isinstance(first, int):
            batch[name] = torch.tensor(values, dtype=torch.int64)
        else:
            batch[name] = values
    return batch


def _stack(tensors: list[torch.Tensor], name: str) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ShardReadError(
            f"cannot batch {name!r}: samples have shapes {sorted(shapes)[:4]}; give the dataset a crop "
            "transform (e.g. convssl.views.crop_views.crop_views) and channels=1 or 3"
        )
    return torch.stack(tensors)
