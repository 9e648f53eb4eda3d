"""The batches a run trains on: its rank's infinite shard loader, resumable at a batch
count, and the move of a batch to the device."""

from __future__ import annotations

import torch


def shard_batches(urls, manifest, data, *, channels: int, seed: int, info, per_rank_batch: int, start_batches: int,
                  transform, labeled: bool = False):
    """The rank's infinite loader over shards ``urls`` (images with ``channels``) with the
    ``data`` section's reading settings; ``transform`` is the task's ``loader_transform()``, run per sample in the
    workers; ``start_batches`` resumes the data position."""
    from convssl.data.loader import make_loader
    from convssl.data.shard_dataset import ShardDataset

    dataset = ShardDataset(
        urls, transform=transform, channels=channels, labeled=labeled,
        shuffle_buffer=data.shuffle_buffer, seed=seed, rank=info.rank,
        world_size=info.world_size, infinite=True, start_batches=start_batches,
        batch_size=per_rank_batch, max_corrupt_fraction=data.max_corrupt_fraction, manifest=manifest,
    )
    return make_loader(dataset, batch_size=per_rank_batch, num_workers=data.workers)


def to_device(batch: dict, dev: torch.device, channels_last: bool) -> dict:
    """Every tensor (and list of tensors) of ``batch`` on ``dev``; images channels-last when asked."""
    def move(x):
        if torch.is_tensor(x):
            x = x.to(dev, non_blocking=True)
            return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
        if isinstance(x, (list, tuple)) and x and torch.is_tensor(x[0]):
            return [move(v) for v in x]
        return x
    return {k: move(v) for k, v in batch.items()}
