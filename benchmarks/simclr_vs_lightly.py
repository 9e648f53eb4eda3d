"""convssl's SimCLR against lightly's, same encoder, views, optimizer and steps.

Both sides train the same convssl encoder architecture (same initial weights) on the
embedded Fashion-MNIST slice: ours is ``convssl.tasks.simclr.SimCLR``; lightly's is its
``SimCLRProjectionHead`` + ``NTXentLoss`` on that encoder, with one forward per view as in
lightly's examples (ours runs both views in one forward). Every step both get the same
two views (crop + flip by ``convssl.views.crops``, colour jitter by
``convssl.views.photometric.color_augment``, made once per step outside the timing) and the same
SGD settings. Steps alternate between the two so both see the same machine load.

    pip install lightly           # the "bench" extra; never needed by convssl itself
    PYTHONPATH=ssl python benchmarks/simclr_vs_lightly.py --steps 30 --batch 128

Prints images/s (training steps only), the final losses (both the paper's NT-Xent, the
mean over the 2B anchors) and the linear-probe top-1 (best stage) of each encoder.
"""

from __future__ import annotations

import argparse
import gzip
import io
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from convssl.views.photometric_config import ColorAugConfig
from convssl.views.photometric import color_augment
from convssl.data.config import DataConfig
from convssl.views.crops import RandomResizedCrop
from convssl.encoders import build_encoder
from convssl.tasks.simclr import SimCLR

ROOT = Path(__file__).resolve().parents[1]
IDX = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
MEAN, STD = (0.286,), (0.353,)


def load_images(limit: int) -> torch.Tensor:
    """uint8 [N, 1, 28, 28]: data/fmnist/unlabeled shards if present, else the IDX file."""
    shards = sorted((ROOT / "data" / "fmnist" / "unlabeled").glob("*.tar"))
    if shards:
        from PIL import Image

        imgs = []
        for shard in shards:
            with tarfile.open(shard) as tar:
                for member in tar:
                    if member.name.endswith(".png"):
                        imgs.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read()))))
        x = np.stack(imgs)
    else:
        with gzip.open(IDX) as f:
            x = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    return torch.from_numpy(x[:limit].copy()).unsqueeze(1)


def make_views(images, batch, gen, crop, color_cfg):
    idx = torch.randint(len(images), (batch,), generator=gen)
    views = []
    for _ in range(2):
        v = torch.stack([crop.crop_once(images[i], gen) for i in idx.tolist()]).float() / 255.0
        views.append(color_augment(v, color_cfg, gen))
    return views  # float 0..1; both sides normalize the same way


class LightlySimCLR(torch.nn.Module):
    """lightly's building blocks on a convssl encoder (as in lightly's SimCLR example)."""

    def __init__(self, encoder, temperature: float):
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        self.encoder = encoder
        self.head = SimCLRProjectionHead(encoder.feature_dim, 2048, 128)
        self.criterion = NTXentLoss(temperature=temperature)

    def forward(self, x0, x1):
        from convssl.views.normalize import normalize

        z0 = self.head(self.encoder.pool(normalize(x0, MEAN, STD)))
        z1 = self.head(self.encoder.pool(normalize(x1, MEAN, STD)))
        return self.criterion(z0, z1)


def linear_probe_top1(encoder) -> float:
    """convssl's linear probe (fit on data/fmnist/train, scored on data/fmnist/test): the
    best stage's top-1, the same protocol for both sides."""
    import tempfile

    from convssl.eval.probe import probe

    with tempfile.TemporaryDirectory() as out:
        report = probe(encoder, str(ROOT / "data/fmnist/train"), str(ROOT / "data/fmnist/test"),
                       size=32, channels=1, mean=MEAN, std=STD, out_dir=out, knn=False)
    return max(s["linear_top1"] for s in report["stages"])



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--encoder", default="torchvision:resnet18")
    parser.add_argument("--small-input", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.06, help="SGD lr at batch 256")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    images = load_images(args.images)
    data = DataConfig(size=32, channels=1, mean=MEAN, std=STD, scale=(0.2, 1.0),
                      batch_size=args.batch)
    color = ColorAugConfig(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, grayscale_p=0.0)
    crop = RandomResizedCrop(32, scale=data.scale)

    def encoder():
        torch.manual_seed(args.seed)  # identical initial encoder weights on both sides
        return build_encoder(args.encoder, small_input=args.small_input, input_size=32, in_chans=1)

    ours = SimCLR(encoder(), SimCLR.Config(temperature=args.temperature, augment_on="worker"), data)
    theirs = LightlySimCLR(encoder(), args.temperature)
    lr = args.lr * args.batch / 256
    opts = {name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=lr,
                                  momentum=0.9, weight_decay=5e-4)
            for name, m in (("convssl", ours), ("lightly", theirs))}
    steps_fn = {
        "convssl": lambda v: ours({"img": v})["loss"],
        "lightly": lambda v: theirs(v[0], v[1]),
    }
    seconds = {"convssl": 0.0, "lightly": 0.0}
    losses = {"convssl": [], "lightly": []}
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        views = make_views(images, args.batch, gen, crop, color)
        for name in ("convssl", "lightly") if step % 2 == 0 else ("lightly", "convssl"):
            t0 = time.perf_counter()
            loss = steps_fn[name](views)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if step > 0:  # the first step warms up allocators and kernels
                seconds[name] += time.perf_counter() - t0
            losses[name].append(loss.item())
    timed = (args.steps - 1) * args.batch
    print(f"SimCLR, {args.encoder} (small_input={args.small_input}), 1x32x32, batch {args.batch}, "
          f"{args.steps} steps, SGD lr {lr:g}, tau {args.temperature}, torch threads {torch.get_num_threads()}")
    print(f"{'':10s} {'images/s':>10s} {'loss first':>11s} {'loss last5':>11s} {'probe top-1':>12s}")
    for name, model in (("convssl", ours), ("lightly", theirs)):
        top1 = linear_probe_top1(model.encoder)
        last = sum(losses[name][-5:]) / len(losses[name][-5:])
        print(f"{name:10s} {timed / seconds[name]:10.1f} {losses[name][0]:11.4f} {last:11.4f} "
              f"{100 * top1:12.1f}")
    print(f"ratio convssl/lightly images/s: {seconds['lightly'] / seconds['convssl']:.2f}")


if __name__ == "__main__":
    main()
