"""lightly's SimCLR on the full Fashion-MNIST train set for a wall-clock budget: the outside reference.

The model, loss, views and optimizer are lightly's own building blocks as its CIFAR-10
benchmark uses them (``SimCLRProjectionHead`` 512-2048-128 with batch norm,
``NTXentLoss(temperature=0.5)``, ``SimCLRTransform``, SGD with momentum 0.9, weight decay
5e-4, learning rate 0.06 x batch / 128 with a cosine schedule over the run); the backbone
is torchvision's ResNet-18 with a one-channel ``conv1`` and no ``fc`` (the architecture
``convssl`` builds for ``torchvision:resnet18`` with ``in_chans: 1``). The views match
convssl's SimCLR recipe: crop scale 0.2-1, horizontal flip, colour jitter p 0.8 with
strength 0.5 (brightness and contrast 0.4), no blur, no grayscale (the images are gray).

The budget is spent as ``convssl pretrain --budget`` spends it: start-up is not counted,
two untimed steps warm up, the next steps are timed, and the step count is fixed so the
run ends at 95% of what is left (so the cosine schedule spans exactly the run).

Writes ``OUT/backbone.pth`` (a state dict under torchvision's keys, ``fc`` dropped: probe it
with ``convssl probe --encoder torchvision:resnet18 --in-chans 1 --init OUT/backbone.pth``)
and ``OUT/run.json`` (steps, images seen, img/s, planned and actual seconds).

    pip install lightly
    OMP_NUM_THREADS=1 python benchmarks/lightly_simclr_budget.py --budget 10m --out runs/lightly
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

IDX = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
MEAN, STD = [0.286], [0.353]
WARM_STEPS, TIMED_STEPS, SAFETY = 2, 10, 0.95


class Images(torch.utils.data.Dataset):
    """Fashion-MNIST training images (no labels) as gray PIL images through a transform."""

    def __init__(self, path: Path, transform):
        with gzip.open(path) as f:
            self.images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i], mode="L"))


class SimCLRModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from lightly.models.modules import SimCLRProjectionHead

        backbone = torchvision.models.resnet18()
        backbone.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        backbone.fc = torch.nn.Identity()
        self.backbone = backbone
        self.head = SimCLRProjectionHead(512, 2048, 128)

    def forward(self, x):
        return self.head(self.backbone(x))


def parse_budget(text: str) -> float:
    return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="10m", help="wall-clock budget: 90s, 10m, 1.5h")
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=0, help="a fixed step count instead of the budget (smoke runs)")
    args = parser.parse_args()
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    transform = SimCLRTransform(input_size=args.size, cj_prob=0.8, cj_strength=0.5, min_scale=0.2,
                                random_gray_scale=0.0, gaussian_blur=0.0, hf_prob=0.5,
                                normalize={"mean": MEAN, "std": STD})
    loader = torch.utils.data.DataLoader(Images(IDX, transform), batch_size=args.batch, shuffle=True,
                                         drop_last=True, num_workers=args.workers, persistent_workers=args.workers > 0)
    model = SimCLRModel()
    criterion = NTXentLoss(temperature=0.5)
    lr = 0.06 * args.batch / 128
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    budget_s = parse_budget(args.budget)

    def batches():
        while True:
            yield from loader

    stream = batches()
    total = args.max_steps or None
    step, clock, t_timed, losses = 0, None, None, []
    model.train()
    while total is None or step < total:
        views = next(stream)
        if step == 0:
            clock = time.perf_counter()  # the budget's clock starts at the first step, as convssl's
        if total is not None:
            for group in optimizer.param_groups:  # cosine over the decided run
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
        z0, z1 = model(views[0]), model(views[1])
        loss = criterion(z0, z1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
        step += 1
        if total is None and step == WARM_STEPS:
            t_timed = time.perf_counter()
        if total is None and step == WARM_STEPS + TIMED_STEPS:
            per_step = (time.perf_counter() - t_timed) / TIMED_STEPS
            left = budget_s - (time.perf_counter() - clock)
            total = step + max(1, int(SAFETY * left / per_step))
            print(f"budget {args.budget}: {total} steps at {per_step:.3g} s/step", flush=True)
    seconds = time.perf_counter() - clock
    state = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, out / "backbone.pth")
    record = {"steps": step, "batch": args.batch, "images_seen": step * args.batch,
              "seconds": seconds, "budget_seconds": None if args.max_steps else budget_s,
              "img_per_s": step * args.batch / seconds, "final_loss": float(np.mean(losses[-10:])),
              "lr": lr, "size": args.size, "lightly": __import__("lightly").__version__}
    (out / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
