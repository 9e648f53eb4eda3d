"""Encoder forward+backward time and peak memory per sparse backend, per stage and in total.

For each encoder and mask ratio (0.4, 0.6, 0.75, 0.9): the sparse encoder's forward and
backward (a random projection of every stage map as the loss) under ``masked``, ``gather``,
``spconv`` (when installed; forward+backward of its layers, not used by SparK for training,
see the README) and ``auto``, the backends taking turns each round so machine load hits them
alike; per layer, ``auto``'s choice table (its timed trial of each backend on that layer's
real input) gives the split. With --spark, the whole SparK step (forward, backward, AdamW)
with ``auto`` against ``masked``. Memory: only the process's peak RSS (per-backend peak
memory is not separated yet).

Run:  PYTHONPATH=ssl nice python benchmarks/sparse_backends.py [--threads 2] [--steps 3]
        [--cases resnet18_small,resnet50] [--ratios 0.4,0.6,0.75,0.9] [--batch 8]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from convssl.encoders import build_encoder
from convssl.sparse import SparseEncoder, random_patch_mask
from convssl.sparse.backends import auto
from convssl.tasks.spark import SparK

CASES = {
    "resnet18_small": dict(spec="torchvision:resnet18", small_input=True, input_size=32),
    "resnet50": dict(spec="torchvision:resnet50", input_size=224),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fns: dict, steps: int) -> dict[str, float]:
    """Median ms per call, functions taking turns each round (one warm-up round)."""
    times = {k: [] for k in fns}
    for i in range(steps + 1):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i:
                times[k].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def encoder_step(enc, x, mask):
    def run():
        feats = enc(x, mask)
        sum(f.mean() for f in feats).backward()
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cases", default="resnet18_small,resnet50")
    ap.add_argument("--ratios", default="0.4,0.6,0.75,0.9")
    ap.add_argument("--backends", default="masked,gather,auto")
    ap.add_argument("--spark", action="store_true", help="also the whole SparK step, auto vs masked")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.backends.split(",")
    print(f"threads {args.threads}, batch {args.batch}, median of {args.steps}, fp32 CPU")
    for case in args.cases.split(","):
        kw = dict(CASES[case])
        spec, size = kw.pop("spec"), kw["input_size"]
        dense = build_encoder(spec, **kw)
        x = torch.randn(args.batch, 3, size, size)
        encs = {n: SparseEncoder(dense, backend=n).train() for n in names}
        grid = encs[names[0]].grid((size, size))
        print(f"\n### {case} ({size} px)\n")
        print("| mask ratio | " + " | ".join(f"{n} ms" for n in names) + " | " +
              " | ".join(f"{n}/masked" for n in names[1:]) + " |")
        print("|---" * (1 + 2 * len(names) - 1) + "|")
        for ratio in map(float, args.ratios.split(",")):
            mask = random_patch_mask(args.batch, grid, ratio, generator=torch.Generator().manual_seed(0))
            t = timed({n: encoder_step(e, x, mask) for n, e in encs.items()}, args.steps)
            print(f"| {ratio} | " + " | ".join(f"{t[n]:.0f}" for n in names) + " | " +
                  " | ".join(f"{t[n] / t['masked']:.2f}" for n in names[1:]) + " |")
            if "auto" in encs:
                print("\n<details><summary>auto choices at ratio", ratio, "</summary>\n")
                print(auto.format_table(encs["auto"].choice_table))
                print("\n</details>\n")
                encs["auto"].backend_choices.clear()  # measure again at the next ratio
        print(f"peak RSS of the process: {_rss_mb():.0f} MB")
        if args.spark:
            tasks = {}
            for n in ("masked", "auto"):
                torch.manual_seed(0)
                task = SparK(build_encoder(spec, **kw), SparK.Config(backend=n))
                opt = torch.optim.AdamW(task.parameters(), lr=1e-4)
                img = torch.randint(0, 255, (args.batch, 3, size, size), dtype=torch.uint8)

                def step(task=task, opt=opt, img=img):
                    opt.zero_grad(set_to_none=True)
                    task({"img": [img]})["loss"].backward()
                    opt.step()
                tasks[n] = step
            t = timed(tasks, args.steps)
            print(f"\nSparK step (mask 0.6): masked {t['masked']:.0f} ms, auto {t['auto']:.0f} ms, "
                  f"auto/masked {t['auto'] / t['masked']:.2f}")


if __name__ == "__main__":
    main()
