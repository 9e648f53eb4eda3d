"""``convssl bench data``: decode + random-resized-crop images/s per loader worker, read
three ways side by side in one process, on the same JPEG images:

- local shards (``convssl shards`` output, read by ``ShardDataset``),
- the same shards over HTTP, from a server this command starts on 127.0.0.1,
- torchvision ``ImageFolder`` + PIL on the image files (the usual baseline).

Every way runs the same crop (``convssl.views.crops.RandomResizedCrop``), so the ratios
measure storage, transport and decode. Runs alternate between the ways and the best
of ``--rounds`` is kept (on a shared machine the slowest runs are the noisiest).

Images: ``--images FOLDER`` (an ImageFolder tree: ROOT/<class>/<images>), or by default ``--count``
JPEGs (quality 90, 256-400 px) cut from scikit-image's bundled photographs
(``pip install scikit-image``), written to a temporary folder.

Examples::

    convssl bench data --workers 1 2
    convssl bench data --images ~/photos --workers 1 2 4 8 16 --count 4000
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from convssl.errors import ConvsslError

_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "hubble_deep_field", "retina",
           "immunohistochemistry")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``convssl bench data`` options on ``parser``."""
    parser.add_argument("--images", default=None, metavar="FOLDER",
                        help="images to use (default: JPEGs cut from scikit-image's sample photos)")
    parser.add_argument("--count", type=int, default=600, metavar="N", help="photos to make without --images (600)")
    parser.add_argument("--size", type=int, default=224, metavar="PX", help="crop size (224)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="loader worker counts to measure (1 2)")
    parser.add_argument("--batch", type=int, default=32, metavar="B", help="batch size (32)")
    parser.add_argument("--epochs", type=int, default=2, metavar="E", help="passes over the images per run (2)")
    parser.add_argument("--rounds", type=int, default=2, metavar="R", help="alternating runs per way; best kept (2)")
    parser.add_argument("--threads", type=int, default=1, metavar="T", help="torch threads per process (1)")


def run(args: argparse.Namespace) -> int:
    """Prepare the images and shards, measure every way and worker count, print a table."""
    if min(args.workers) < 0 or args.count < 1 or args.batch < 1 or args.epochs < 1 or args.rounds < 1:
        raise ConvsslError("--workers must be >= 0 and --count, --batch, --epochs, --rounds positive")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="convssl-bench-data-") as temp:
        temp = Path(temp)
        images = Path(args.images).expanduser() if args.images else _make_photos(temp / "photos", args.count)
        shards = _write_shards(images, temp / "shards", max(min(args.workers), 1))
        with _serve(shards) as base_url:
            ways = {
                "local shards": lambda w: _shard_rate(str(shards), args, w),
                "HTTP shards": lambda w: _shard_rate(f"{base_url}/manifest.json", args, w),
                "ImageFolder + PIL": lambda w: _folder_rate(images, args, w),
            }
            rates = {(way, w): 0.0 for way in ways for w in args.workers}
            for _ in range(args.rounds):
                for workers in args.workers:
                    for way, measure in ways.items():
                        rates[way, workers] = max(rates[way, workers], measure(workers))
                        print(f"{way}, {workers} workers: {rates[way, workers]:.0f} img/s", flush=True)
    print()
    print(_table(rates, list(ways), args.workers))
    print(f"\n{args.rounds} alternating rounds, best kept; crop {args.size}, batch {args.batch}, "
          f"{args.epochs} epochs a run; {os.cpu_count()} CPU cores, torch {torch.__version__}")
    return 0


def _table(rates: dict, ways: list[str], worker_counts: list[int]) -> str:
    head = "| workers | " + " | ".join(f"{way} img/s (per worker)" for way in ways) + " | shards / ImageFolder |"
    rule = "|---:|" + "---:|" * len(ways) + "---:|"
    rows = []
    for w in worker_counts:
        cells = [f"{rates[way, w]:.0f} ({rates[way, w] / max(w, 1):.0f})" for way in ways]
        ratio = rates[ways[0], w] / max(rates[ways[-1], w], 1e-9)
        rows.append(f"| {w} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    return "\n".join([head, rule, *rows])


def _make_photos(root: Path, count: int) -> Path:
    """``count`` JPEGs (quality 90): random 256-400 px crops of scikit-image photos."""
    try:
        import skimage.data
    except ImportError:
        raise ConvsslError("the default images come from scikit-image: pip install scikit-image, "
                           "or pass --images FOLDER") from None
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = []
    for name in _PHOTOS:
        loaded = getattr(skimage.data, name)()
        photos.append(np.asarray(Image.fromarray(loaded[0] if isinstance(loaded, tuple) else loaded).convert("RGB")))
        (root / name).mkdir(parents=True)
    for index in range(count):
        which = index % len(photos)
        photo_HWC = photos[which]
        height, width = (min(int(rng.integers(256, 401)), side) for side in photo_HWC.shape[:2])
        top = int(rng.integers(0, photo_HWC.shape[0] - height + 1))
        left = int(rng.integers(0, photo_HWC.shape[1] - width + 1))
        Image.fromarray(photo_HWC[top:top + height, left:left + width]).save(
            root / _PHOTOS[which] / f"{index:05d}.jpg", quality=90)
    return root


def _write_shards(images: Path, out: Path, units: int) -> Path:
    from convssl.data.sources import open_source
    from convssl.data.writer import write_shards

    source = open_source(str(images))
    write_shards(source, out, maxcount=max(1, len(source) // (4 * units)), workers=2)
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _serve:  # noqa: N801 - a context manager, used like a function
    """An HTTP server for ``folder`` on 127.0.0.1 (a free port), in a thread."""

    def __init__(self, folder: Path):
        handler = functools.partial(_Quiet, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _images_per_second(loader, epochs: int, set_epoch=None) -> float:
    """Throughput over ``epochs`` passes, timed from the first batch (worker start-up excluded)."""
    batches = iter(loader)
    next(batches)
    started, count = time.perf_counter(), 0
    for epoch in range(epochs):
        if epoch:
            if set_epoch:
                set_epoch(epoch)
            batches = iter(loader)
        for batch in batches:
            count += len(batch["img"] if isinstance(batch, dict) else batch[0])
    seconds = time.perf_counter() - started
    del batches
    return count / seconds


def _crop(args):
    from convssl.views.crops import RandomResizedCrop

    return RandomResizedCrop(args.size)


def _shard_rate(spec: str, args: argparse.Namespace, workers: int) -> float:
    from convssl.data.loader import make_loader
    from convssl.data.shard_dataset import ShardDataset
    from convssl.views.crop_views import Named

    dataset = ShardDataset(spec, transform=Named(_crop(args)), channels=3, shuffle_buffer=256)
    loader = make_loader(dataset, args.batch, workers)
    return _images_per_second(loader, args.epochs, dataset.set_epoch)


class _PilCrop:
    """ImageFolder transform: PIL image -> uint8 (C, H, W) -> the same random crop, with a
    generator seeded per worker."""

    def __init__(self, crop):
        self.crop, self.generator = crop, None

    def __call__(self, img):
        from torchvision.transforms.v2.functional import pil_to_tensor

        if self.generator is None:
            info = torch.utils.data.get_worker_info()
            self.generator = torch.Generator().manual_seed(info.id if info else 0)
        return self.crop(pil_to_tensor(img.convert("RGB")), self.generator)


def _folder_rate(images: Path, args: argparse.Namespace, workers: int) -> float:
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(images), transform=_PilCrop(_crop(args)))
    loader = DataLoader(folder, batch_size=args.batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    return _images_per_second(loader, args.epochs)
