"""Run by tests/test_train.py, in one process or under torchrun: pretrain on the same
global batches (read in order from the embedded shards), each rank taking its slice.

usage: train_fixed_batches.py OUT_DIR STEPS GLOBAL_BATCH
"""

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # custom_nets

from convssl import dist  # noqa: E402
from convssl.views.crops import ResizeCenterCrop  # noqa: E402
from convssl.data.shard_dataset import ShardDataset  # noqa: E402
from convssl.views.crop_views import Named  # noqa: E402
from convssl.recipe import recipe_from_dict  # noqa: E402
from convssl.train.trainer import pretrain  # noqa: E402

ROOT = HERE.parents[1]


def recipe(steps: int, batch: int):
    return recipe_from_dict({
        "encoder": {"spec": "custom_nets:gn_convnet", "in_chans": 1},
        "data": {"size": 16, "channels": 1, "mean": [0.286], "std": [0.353], "batch_size": batch, "workers": 0},
        "task": {"name": "rotation", "head": "linear"},
        "optim": {"name": "sgd", "lr_per_256": 2.0, "weight_decay": 0.0005, "warmup_epochs": 0},
        "train": {"max_steps": steps, "seed": 3, "log_every": 1, "ckpt_every": 0, "channels_last": False},
    })


def global_batches(steps: int, batch: int) -> list[torch.Tensor]:
    data = ShardDataset(str(ROOT / "data/fmnist/unlabeled"), transform=Named(ResizeCenterCrop(16)), channels=1)
    imgs = []
    for sample in data:
        imgs.append(sample["img"])
        if len(imgs) == steps * batch:
            break
    return list(torch.stack(imgs).split(batch))


def main(out: str, steps: int, batch: int) -> None:
    rank, world = int(dist.from_env().rank), int(dist.from_env().world_size)
    per_rank = batch // world
    mine = [{"img": [b[rank * per_rank:(rank + 1) * per_rank]]} for b in global_batches(steps, batch)]
    pretrain(recipe(steps, batch), data="fixed batches", out=out, batches=mine, device="cpu", progress=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
