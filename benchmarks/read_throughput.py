"""Images/s of decode + random resized crop: convssl shards vs torchvision ImageFolder.

Two data sets, each read both ways with 2 DataLoader workers and the same crop
(``convssl.data.crops.RandomResizedCrop``), so the ratio measures the storage and
decode path:

(a) the full Fashion-MNIST train set (60000 28x28 PNG), crop to 28;
(b) real-photo JPEGs: random 256-400 px crops of scikit-image's bundled photographs
    (``pip install scikit-image``, a benchmark-only dependency), crop to 224.

Usage::

    PYTHONPATH=ssl python benchmarks/read_throughput.py [--photos 1500] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms.v2.functional import pil_to_tensor

from convssl.data.crops import RandomResizedCrop
from convssl.data.idx import FASHION_MNIST_CLASSES, load_idx_dataset
from convssl.data.reader import ShardDataset, make_loader
from convssl.data.views import Named
from convssl.data.sources import open_source
from convssl.data.writer import write_shards

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "hubble_deep_field", "retina",
          "immunohistochemistry")


class PilCrop:
    """ImageFolder transform: PIL image -> uint8 (C, H, W) -> the same random crop.

    The generator is seeded per worker from the worker id, as the shard reader does.
    """

    def __init__(self, crop: RandomResizedCrop, mode: str):
        self.crop, self.mode, self.generator = crop, mode, None

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.generator is None:
            info = torch.utils.data.get_worker_info()
            self.generator = torch.Generator().manual_seed(info.id if info else 0)
        return self.crop(pil_to_tensor(img.convert(self.mode)), self.generator)


def write_fashion_mnist_files(root: Path) -> None:
    """The 60000 train images as an ImageFolder tree of PNG files."""
    images_nhw, labels_n = load_idx_dataset("fashion-mnist", "train")
    for label, name in enumerate(FASHION_MNIST_CLASSES):
        (root / name.replace("/", "_")).mkdir(parents=True)
    for index, (image_hw, label) in enumerate(zip(images_nhw, labels_n)):
        Image.fromarray(image_hw, "L").save(root / FASHION_MNIST_CLASSES[label].replace("/", "_") / f"{index:05d}.png")


def write_photo_files(root: Path, count: int) -> None:
    """``count`` JPEGs (quality 90): random 256-400 px crops of scikit-image photos."""
    import skimage.data

    rng = np.random.default_rng(0)
    loaded = [getattr(skimage.data, name)() for name in PHOTOS]
    photos = [np.asarray(Image.fromarray(x[0] if isinstance(x, tuple) else x).convert("RGB")) for x in loaded]
    for name in PHOTOS:
        (root / name).mkdir(parents=True)
    for index in range(count):
        which = index % len(photos)
        photo_HWC = photos[which]
        height, width = (int(rng.integers(256, 401)) for _ in range(2))
        height, width = min(height, photo_HWC.shape[0]), min(width, photo_HWC.shape[1])
        top = int(rng.integers(0, photo_HWC.shape[0] - height + 1))
        left = int(rng.integers(0, photo_HWC.shape[1] - width + 1))
        crop = Image.fromarray(photo_HWC[top:top + height, left:left + width])
        crop.save(root / PHOTOS[which] / f"{index:05d}.jpg", quality=90)


def images_per_second(loader: DataLoader, epochs: int) -> float:
    """Throughput over ``epochs`` passes, after one warm-up batch (worker start-up)."""
    batches = iter(loader)
    next(batches)
    started, count = time.perf_counter(), 0
    for epoch in range(epochs):
        if epoch:
            if isinstance(loader.dataset, ShardDataset):
                loader.dataset.set_epoch(epoch)
            batches = iter(loader)
        for batch in batches:
            images = batch["img"] if isinstance(batch, dict) else batch[0]
            count += len(images)
    return count / (time.perf_counter() - started)


def compare(name: str, files: Path, shards: Path, crop: RandomResizedCrop, mode: str,
            batch_size: int, workers: int, epochs: int, rounds: int = 2) -> tuple[str, float, float]:
    """Best of ``rounds`` alternating runs each way (the machine may be shared)."""
    shard_rates, folder_rates = [], []
    for _ in range(rounds):
        shard_dataset = ShardDataset(str(shards), transform=Named(crop), labeled=True, shuffle_buffer=500,
                                     channels=1 if mode == "L" else 3)
        shard_rates.append(images_per_second(make_loader(shard_dataset, batch_size, workers), epochs))
        folder = ImageFolder(str(files), transform=PilCrop(crop, mode))
        folder_loader = DataLoader(folder, batch_size=batch_size, shuffle=True, num_workers=workers,
                                   persistent_workers=True, prefetch_factor=4)
        folder_rates.append(images_per_second(folder_loader, epochs))
        print(f"{name}: shards {shard_rates[-1]:.0f} img/s, ImageFolder {folder_rates[-1]:.0f} img/s", flush=True)
    return name, max(shard_rates), max(folder_rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1500, help="number of photo JPEGs to make")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="convssl-bench-") as temp:
        temp = Path(temp)
        for step, prepare in [
            ("photo files", lambda: write_photo_files(temp / "photo-files", args.photos)),
            # Enough shards that every worker gets the same number (an even split).
            ("photo shards", lambda: write_shards(open_source(str(temp / "photo-files"), labeled=True),
                                                  temp / "photo-shards", maxcount=args.photos // 6, workers=2)),
            ("fashion-mnist shards", lambda: write_shards(open_source("fashion-mnist:train"),
                                                          temp / "fmnist-shards", workers=2)),
            ("fashion-mnist files", lambda: write_fashion_mnist_files(temp / "fmnist-files")),
        ]:
            started = time.perf_counter()
            prepare()
            print(f"wrote {step} in {time.perf_counter() - started:.1f} s", flush=True)
        rows.append(compare("fashion-mnist train, 60000 PNG 28px, crop 28", temp / "fmnist-files",
                            temp / "fmnist-shards", RandomResizedCrop(28), "L", 256, args.workers, 1))
        rows.append(compare(f"photos, {args.photos} JPEG 256-400px, crop 224", temp / "photo-files",
                            temp / "photo-shards", RandomResizedCrop(224), "RGB", 64, args.workers, 3))
    print(f"\nbest of 2 alternating runs; {args.workers} DataLoader workers, {os.cpu_count()} CPU cores, torch {torch.__version__}\n")
    print(f"| {'data':<46} | {'shards img/s':>12} | {'ImageFolder img/s':>17} | {'ratio':>5} |")
    print(f"|{'-' * 48}|{'-' * 14}:|{'-' * 18}:|{'-' * 6}:|")
    for name, shard_rate, folder_rate in rows:
        print(f"| {name:<46} | {shard_rate:>12.0f} | {folder_rate:>17.0f} | {shard_rate / folder_rate:>5.2f} |")


if __name__ == "__main__":
    main()
