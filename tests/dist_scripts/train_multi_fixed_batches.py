"""Run by tests/test_multi.py, in one process or under torchrun: a multi task (rotation +
SimCLR, uncertainty weighting) pretrained on the same global batches, each rank taking its
slice. GroupNorm encoder and a head without BN: no statistic depends on the split.

usage: train_multi_fixed_batches.py OUT_DIR STEPS GLOBAL_BATCH
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # custom_nets

from train_fixed_batches import global_batches  # noqa: E402

from convssl import dist  # noqa: E402
from convssl.recipe import recipe_from_dict  # noqa: E402
from convssl.train.trainer import pretrain  # noqa: E402


def recipe(steps: int, batch: int):
    return recipe_from_dict({
        "encoder": {"spec": "custom_nets:gn_convnet", "in_chans": 1},
        "data": {"size": 16, "channels": 1, "mean": [0.286], "std": [0.353], "batch_size": batch, "workers": 0},
        "task": {"name": "multi", "weighting": "uncertainty", "tasks": [
            {"name": "rotation", "weight": 0.4, "head": "linear"},
            {"name": "simclr", "weight": 1.0, "augment_on": "worker", "temperature": 0.5,
             "proj_hidden_dim": 32, "proj_out_dim": 8, "proj_batch_norm": False},
        ]},
        "optim": {"name": "sgd", "lr_per_256": 2.0, "weight_decay": 0.0005, "warmup_epochs": 0},
        "train": {"max_steps": steps, "seed": 3, "log_every": 1, "ckpt_every": 0, "channels_last": False},
    })


def main(out: str, steps: int, batch: int) -> None:
    rank, world = int(dist.from_env().rank), int(dist.from_env().world_size)
    b = batch // world
    mine = []
    for g in global_batches(steps, batch):
        x = g[rank * b:(rank + 1) * b]
        mine.append({"rotation/img": [x], "simclr/img": [x, x.flip(-1)]})
    pretrain(recipe(steps, batch), data="fixed batches", out=out, batches=mine, device="cpu", progress=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
