"""Training images/s with the online monitor on vs off, side by side in one process.

Rotation prediction on the embedded Fashion-MNIST sample, the same recipe twice (off, on,
off, on: alternating to spread the noise of a shared machine); the monitor scores the
1000-image labeled sample every ``--every`` steps. Prints a Markdown table.

Usage::

    python benchmarks/monitor_cost.py [--encoder custom_nets:small_convnet] [--steps 40] [--every 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # custom_nets

from convssl.recipe import recipe_from_dict  # noqa: E402
from convssl import pretrain  # noqa: E402  (the public API: monitor=SHARDS is the online monitor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="custom_nets:small_convnet")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = recipe_from_dict({
        "encoder": {"spec": args.encoder, "in_chans": 1},
        "data": {"size": args.size, "channels": 1, "mean": [0.286], "std": [0.353], "batch_size": args.batch,
                 "workers": 1, "shuffle_buffer": 256},
        "task": {"name": "rotation", "hidden": 64},
        "optim": {"name": "sgd", "lr_per_256": 0.1},
        "train": {"max_steps": args.steps, "log_every": args.every, "ckpt_every": 0, "monitor_every": args.every},
    })
    rates: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for mode in ("off", "on"):
                monitor = str(ROOT / "data" / "fmnist" / "train") if mode == "on" else None
                summary = pretrain(recipe, str(ROOT / "data" / "fmnist" / "unlabeled"), Path(tmp) / f"{mode}{i}",
                                   progress=False, monitor=monitor)
                rates[mode].append(summary["img_per_s"])
    off, on = (sum(v) / len(v) for v in (rates["off"], rates["on"]))
    print(f"{args.encoder}, {args.size} px, batch {args.batch}, {args.steps} steps, monitor every {args.every} "
          f"steps on 1000 labeled images; mean of {args.repeats} runs each\n")
    print("| monitor | train img/s | relative |\n|---|--:|--:|")
    print(f"| off | {off:.1f} | 1.00 |\n| on | {on:.1f} | {on / off:.2f} |")


if __name__ == "__main__":
    main()
