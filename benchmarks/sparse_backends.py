"""Encoder forward+backward time and peak memory per sparse backend, per stage and in total.

For each encoder and mask ratio (0.4, 0.6, 0.75, 0.9): the sparse encoder's forward and
backward (the mean of every stage map as the loss) under ``masked``, ``gather``, ``spconv``
(when installed) and ``auto``, the backends taking turns each round so machine load hits
them alike, and each backend's peak memory during one step (see ``step_memory_mb``). Per stage: ``auto``'s timed trial of every backend on each layer's real
input, summed over the layers a backend can run, against masked on the same layers, and
how many of the stage's layers ``auto`` gave it; the full per-layer choice table follows.
With --spark, the whole SparK step (forward, backward, AdamW) with ``auto`` against
``masked``.

Run:  PYTHONPATH=ssl nice python benchmarks/sparse_backends.py [--threads 2] [--steps 3]
        [--cases resnet18_small,resnet50] [--ratios 0.4,0.6,0.75,0.9] [--batch 8]
        [--backends masked,gather,spconv,auto] [--channels-last]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from convssl.bench.step import peak_memory, reset_peak_memory
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


def step_memory_mb(fn, device: torch.device) -> float:
    """Peak memory one call of ``fn`` allocates above what was allocated before it, MB: CUDA's
    peak allocated memory, or on CPU the peak of the running sum of the allocations and frees
    the profiler records (torch's allocations only; a library's own buffers are not seen)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        reset_peak_memory(device)
        fn()
        return (peak_memory(device) - base) / 2**20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    now = peak = 0
    for _, nbytes in events:
        now += nbytes
        peak = max(peak, now)
    return peak / 2**20


def stage_of(path: str) -> str:
    head = path.split(".")[0]
    return head if head.startswith("layer") else "stem"


def stage_table(rows: list[dict], names: list[str]) -> list[str]:
    """Per stage: each backend's summed trial time / masked's on the same layers, and how
    many of the stage's timed layers auto gave it."""
    stages: dict[str, list[dict]] = {}
    for r in rows:
        if r["ms"]:
            stages.setdefault(stage_of(r["layer"]), []).append(r)
    out = ["| stage | " + " | ".join(f"{n}/masked (chosen)" for n in names) + " |",
           "|---|" + "---|" * len(names)]
    for stage, rs in stages.items():
        cells = []
        for n in names:
            run = [r for r in rs if n in r["ms"]]
            if not run:
                cells.append("-")
                continue
            ratio = sum(r["ms"][n] for r in run) / sum(r["ms"]["masked"] for r in run)
            chosen = sum(r["choice"] == n for r in rs)
            cells.append(f"{ratio:.2f} ({chosen} of {len(rs)})")
        out.append(f"| {stage} | " + " | ".join(cells) + " |")
    return out


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
    ap.add_argument("--backends", default="masked,gather,spconv,auto")
    ap.add_argument("--spark", action="store_true", help="also the whole SparK step, auto vs masked")
    ap.add_argument("--channels-last", action="store_true", help="channels-last model and inputs (as the trainer)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.backends.split(",")
    if "spconv" in names and "spconv" not in auto.available_candidates():
        print("spconv is not installed (pip install 'convssl[spconv]'): left out")
        names.remove("spconv")
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    ratios = [float(r) for r in args.ratios.split(",") if r]  # --ratios "": the SparK step only
    print(f"threads {args.threads}, batch {args.batch}, median of {args.steps}, fp32 CPU, "
          f"{'channels-last' if args.channels_last else 'NCHW'}")
    for case in args.cases.split(","):
        kw = dict(CASES[case])
        spec, size = kw.pop("spec"), kw["input_size"]
        dense = build_encoder(spec, **kw).to(memory_format=layout)
        x = torch.randn(args.batch, 3, size, size).contiguous(memory_format=layout)
        encs = {n: SparseEncoder(dense, backend=n).train() for n in names}
        grid = encs[names[0]].grid((size, size))
        print(f"\n### {case} ({size} px)\n")
        print("| mask ratio | " + " | ".join(f"{n} ms" for n in names) + " | " +
              " | ".join(f"{n}/masked" for n in names[1:]) + " |")
        print("|---" * (1 + 2 * len(names) - 1) + "|")
        details, memory = [], []
        for ratio in ratios:
            mask = random_patch_mask(args.batch, grid, ratio, generator=torch.Generator().manual_seed(0))
            steps = {n: encoder_step(e, x, mask) for n, e in encs.items()}
            t = timed(steps, args.steps)
            mem = {n: step_memory_mb(fn, x.device) for n, fn in steps.items()}
            print(f"| {ratio} | " + " | ".join(f"{t[n]:.0f}" for n in names) + " | " +
                  " | ".join(f"{t[n] / t['masked']:.2f}" for n in names[1:]) + " |")
            memory.append(f"| {ratio} | " + " | ".join(f"{mem[n]:.0f}" for n in names) + " |")
            if "auto" in encs:
                rows = encs["auto"].choice_table
                details += [f"\nPer stage at mask ratio {ratio} (auto's trial, forward + backward):\n",
                            *stage_table(rows, [n for n in names if n not in ("masked", "auto")]),
                            f"\n<details><summary>auto choices at ratio {ratio}</summary>\n",
                            auto.format_table(rows), "\n</details>"]
                encs["auto"].backend_choices.clear()  # measure again at the next ratio
        print("\nPeak memory of one step, MB:\n")
        print("| mask ratio | " + " | ".join(names) + " |")
        print("|---" * (1 + len(names)) + "|")
        print("\n".join(memory))
        print("\n".join(details))
        print(f"peak RSS of the process: {_rss_mb():.0f} MB")
        if args.spark:
            tasks = {}
            for n in ("masked", "auto"):
                torch.manual_seed(0)
                task = SparK(build_encoder(spec, **kw), SparK.Config(backend=n)).to(memory_format=layout)
                opt = torch.optim.AdamW(task.parameters(), lr=1e-4)
                img = torch.randint(0, 255, (args.batch, 3, size, size), dtype=torch.uint8)
                img = img.contiguous(memory_format=layout)

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
