"""Where should the photometric view augmentation run: batched on the training device, or
per sample in the loader workers?

Measures images/s of the same recipe both ways:
- device: ``convssl.views.photometric.color_augment`` on a whole uint8 batch (-> float, augment),
  on the training device (here the CPU: with all threads, and with one thread);
- worker: ``convssl.views.photometric.PhotometricView`` (the same operations, drawn from the
  sample's generator) applied to one uint8 view at a time, in one thread, as one loader
  worker does.
Sizes: Fashion-MNIST-like 32 px gray with the small recipe (jitter, no blur), and 224 px
RGB with SimCLR's ImageNet recipe (strength 1, grayscale, blur p 0.5).

    PYTHONPATH=ssl python benchmarks/augment_placement.py [--device cuda] [--seconds 3]

Best of several timed rounds (the machine may be shared); images/s per process.
"""

from __future__ import annotations

import argparse
import time

import torch

from convssl.views.photometric import PhotometricView, color_augment
from convssl.views.photometric_config import ColorAugConfig

CASES = {
    "32px gray (fmnist)": dict(size=32, channels=1, batch=512, cfg=ColorAugConfig(
        brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, grayscale_p=0.0, blur_p=0.0)),
    "224px RGB (imagenet)": dict(size=224, channels=3, batch=64, cfg=ColorAugConfig(
        brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, grayscale_p=0.2, blur_p=0.5)),
}


def best_rate(fn, images_per_call: int, seconds: float, rounds: int = 5) -> float:
    fn()  # warm-up
    best = 0.0
    for _ in range(rounds):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / rounds:
            fn()
            n += images_per_call
        best = max(best, n / (time.perf_counter() - start))
    return best


def device_rate(case: dict, device: torch.device, seconds: float) -> float:
    x = torch.randint(0, 256, (case["batch"], case["channels"], case["size"], case["size"]),
                      dtype=torch.uint8, device=device)

    def run():
        y = color_augment(x.float() / 255.0, case["cfg"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return y
    return best_rate(run, case["batch"], seconds)


def worker_rate(case: dict, seconds: float) -> float:
    t, generator = PhotometricView(case["cfg"]), torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (64, case["channels"], case["size"], case["size"]), dtype=torch.uint8)

    def run():
        for img in imgs:
            t(img, generator)
    return best_rate(run, len(imgs), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
    args = parser.parse_args()
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    rows = []
    for name, case in CASES.items():
        torch.set_num_threads(threads)
        dev_all = device_rate(case, device, args.seconds)
        torch.set_num_threads(1)
        dev_one = device_rate(case, device, args.seconds) if device.type == "cpu" else float("nan")
        work = worker_rate(case, args.seconds)
        rows.append((name, dev_all, dev_one, work))
    torch.set_num_threads(threads)
    head = (f"{'images/s':22s} {'device (' + str(threads) + ' thr)':>16s} {'device (1 thr)':>15s} "
            f"{'worker (1 proc)':>16s} {'device/worker':>14s} {'dev1/worker':>12s}")
    print(f"device: {device}, torch {torch.__version__}, batch sizes "
          + ", ".join(f"{n}: {c['batch']}" for n, c in CASES.items()))
    print(head)
    print("-" * len(head))
    for name, dev_all, dev_one, work in rows:
        print(f"{name:22s} {dev_all:16.0f} {dev_one:15.0f} {work:16.0f} {dev_all / work:14.1f}x "
              f"{dev_one / work:11.1f}x")


if __name__ == "__main__":
    main()
