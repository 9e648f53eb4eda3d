"""CPU step time of SparK vs a plain dense forward+backward of the same encoder and batch.

Columns (milliseconds per step, median of --steps after --warmup):
  dense f+b     the dense encoder: forward + backward of its last stage's mean
  sparse f+b    the same encoder converted to sparse, under a 60% mask: forward + backward
  SparK step    the whole task: mask, sparse encoder, densify, decoder, loss, backward, AdamW step
  ratio         SparK step / dense f+b

Run:  PYTHONPATH=ssl python benchmarks/spark_step_time.py [--threads 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from convssl.data.config import DataConfig
from convssl.encoders import build_encoder
from convssl.tasks.spark import SparK

CASES = {
    "resnet18 small-input, 32 px, 1 ch, batch 64": (
        dict(spec="torchvision:resnet18", small_input=True, input_size=32, in_chans=1),
        DataConfig(size=32, channels=1, mean=(0.286,), std=(0.353,)), 64, 512),
    "resnet18, 224 px, 3 ch, batch 8": (
        dict(spec="torchvision:resnet18", input_size=224), DataConfig(size=224), 8, 768),
}


def timed(fns: dict, steps: int, warmup: int) -> dict[str, float]:
    """Median ms per call; the functions take turns each round, so a change in machine load
    (shared CI machines) hits all of them alike instead of biasing the ratio."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def bench(enc_kwargs, data, batch, width, steps, warmup, channels_last):
    torch.manual_seed(0)
    img = torch.randint(0, 256, (batch, data.channels, data.size, data.size), dtype=torch.uint8)
    x = (img.float() / 255 - 0.5) / 0.25
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    dense = build_encoder(enc_kwargs.pop("spec"), **enc_kwargs).train().to(memory_format=fmt)
    xd = x.contiguous(memory_format=fmt)
    ref = copy.deepcopy(dense)  # stays dense while `dense` is converted by SparK below

    def dense_step():
        ref.zero_grad(set_to_none=True)
        ref(xd)[-1].mean().backward()

    task = SparK(dense, SparK.Config(decoder_width=width), data).train().to(memory_format=fmt)
    mask = task.make_mask(batch)

    def sparse_step():
        task.zero_grad(set_to_none=True)
        task.encoder(xd, mask)[-1].mean().backward()

    opt = torch.optim.AdamW(task.parameters(), lr=1e-4)
    batch_dict = {"img": [img.contiguous(memory_format=fmt)]}

    def spark_step():
        opt.zero_grad(set_to_none=True)
        task(batch_dict)["loss"].backward()
        opt.step()

    ms = timed({"dense": dense_step, "sparse": sparse_step, "spark": spark_step}, steps, warmup)
    return ms["dense"], ms["sparse"], ms["spark"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, median of {args.steps} steps (ms), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| case | dense f+b | sparse f+b | SparK step | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, (enc_kwargs, data, batch, width) in CASES.items():
        d, s, k = bench(dict(enc_kwargs), data, batch, width, args.steps, args.warmup, args.channels_last)
        print(f"| {name} | {d:.0f} | {s:.0f} | {k:.0f} | {k / d:.2f}x |", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
