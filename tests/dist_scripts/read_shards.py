"""Run by tests/test_data_split.py under torchrun (gloo): each rank reads each SPEC with 2
loader workers for epochs 0 and 1, and rank 0 writes every rank's keys and read counts
to OUT: ``{spec: [rank 0's, rank 1's, ...]}``.

usage: read_shards.py OUT SPEC [SPEC ...]
"""

import json
import sys

import torch.distributed as dist

from convssl.data.loader import make_loader
from convssl.data.shard_dataset import ShardDataset


def main(out: str, specs: list[str]) -> None:
    dist.init_process_group("gloo")
    result = {spec: read(spec) for spec in specs}
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def read(spec: str) -> list[dict]:
    rank, world = dist.get_rank(), dist.get_world_size()
    dataset = ShardDataset(spec, shuffle_buffer=4, seed=1, rank=rank, world_size=world)
    mine = {"keys": {}, "read": {}}
    loader = make_loader(dataset, batch_size=2, num_workers=2)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        read_before = dataset.stats.read
        mine["keys"][epoch] = [key for batch in loader for key in batch["key"]]
        mine["read"][epoch] = dataset.stats.read - read_before
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    return gathered


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
