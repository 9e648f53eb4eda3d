"""Run by tests/test_sparse.py as 2 plain processes (gloo): SparK's sparse BatchNorm on this
rank's half of a batch, statistics reduced over the ranks.

usage: sparse_bn_ranks.py RANK WORLD INIT_FILE INPUTS.pt OUT.pt
"""

import sys

import torch
import torch.distributed as dist
import torch.nn as nn

from convssl.encoders import Encoder
from convssl.sparse import SparseEncoder


def encoder() -> SparseEncoder:
    torch.manual_seed(0)
    return SparseEncoder(Encoder(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.Conv2d(8, 8, 3, stride=2, padding=1)), input_size=16)).train()


def main(rank: int, world: int, init_file: str, inputs: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    data = torch.load(inputs)
    per_rank = len(data["x"]) // world
    part = slice(rank * per_rank, (rank + 1) * per_rank)
    enc = encoder()
    y = enc(data["x"][part], data["mask"][part])[0]
    y.pow(2).sum().backward()
    torch.save({"out": y.detach(), "running_mean": enc.model[1].running_mean.clone(),
                "grad": enc.model[0].weight.grad.clone()}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
