"""Fashion-MNIST linear-probe top-1 after each pretext task vs random init, same budget.

Each task pretrains a small-input ResNet-18 (32 px, 1 channel) on the embedded
5000-image unlabeled sample with its own recipe, shortened to the same budget
(``--epochs``, global batch ``--batch``, warm-up 10% of it), then the frozen encoder is
linear-probed on the labeled sample: 1000 train images, and the 3000 held-out test images of
``test/`` and ``holdout/`` (``--val`` changes that). Prints one table with
per-stage top-1, wall time and training images/s, and writes it to OUT/summary.md.

Usage::

    python benchmarks/fmnist_tasks.py --out runs/fmnist_tasks [--epochs 2] [--batch 64]
        [--tasks rotation spark simclr moco spark+rotation simclr+rotation] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "fmnist"
RECIPES = {
    "rotation": "rotation_resnet18_small.yaml",
    "spark": "spark_resnet18_small.yaml",
    "simclr": "simclr_resnet18_small.yaml",
    "moco": "moco_resnet18_small.yaml",
    "spark+rotation": "multi_spark_rotation_small.yaml",
    "simclr+rotation": "multi_simclr_rotation_small.yaml",
}
# The recipes are tuned for hundreds of epochs; for a short budget these keys change too.
SHORT_BUDGET = {
    "spark": ["optim.lr_per_256=0.002"],  # 2e-4 is SparK's rate for 1600 epochs at batch 4096
    "spark+rotation": ["optim.lr_per_256=0.002"],  # as SparK alone
}


def convssl(*args: str, threads: int | None = None) -> None:
    cmd = [sys.executable, "-m", "convssl", *args]
    print("$ convssl " + " ".join(args), flush=True)
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env)


def probe_row(report_path: Path) -> dict:
    report = json.loads(report_path.read_text())
    return {s["name"]: s["linear_top1"] for s in report["stages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/fmnist_tasks")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tasks", nargs="+", default=list(RECIPES)[:4], choices=list(RECIPES))
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, each with cores/jobs torch threads (default 1; pretrain s is "
                             "then comparable only between runs that shared the machine alike)")
    parser.add_argument("--val", default=f"{DATA / 'test'}::{DATA / 'holdout'}",
                        help="held-out labeled shards (default: data/fmnist/test::data/fmnist/holdout)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    probe_args = ["--train", str(DATA / "train"), "--val", args.val]

    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None

    def random_init():
        t0 = time.perf_counter()
        convssl("probe", "--encoder", "torchvision:resnet18", "--small-input", "--in-chans", "1", "--size", "32",
                "--mean", "0.286", "--std", "0.353", *probe_args, "--out", str(out / "random_init"),
                "--quiet", threads=threads)
        return ("random init", probe_row(out / "random_init" / "report.json"), None, None, time.perf_counter() - t0)

    def one_task(task):
        run = out / task
        t0 = time.perf_counter()
        convssl("pretrain", "--recipe", str(ROOT / "recipes" / RECIPES[task]), "--data", str(DATA / "unlabeled"),
                "--out", str(run), "--epochs", str(args.epochs), "--quiet",
                "--set", f"data.batch_size={args.batch}", "--set", f"optim.warmup_epochs={0.1 * args.epochs}",
                "--set", "train.ckpt_every=0", "--set", "train.log_every=10",
                *[x for kv in SHORT_BUDGET.get(task, []) for x in ("--set", kv)], threads=threads)
        t_train = time.perf_counter() - t0
        metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        img_s = sum(m["img_per_s"] for m in metrics[1:]) / max(1, len(metrics) - 1)
        convssl("probe", "--ckpt", str(run), *probe_args, "--out", str(run / "probe"), "--quiet", threads=threads)
        return (task, probe_row(run / "probe" / "report.json"), t_train, img_s, time.perf_counter() - t0)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(random_init)] + [pool.submit(one_task, t) for t in args.tasks]
        rows = [f.result() for f in futures]

    stages = list(rows[0][1])
    lines = [
        f"Fashion-MNIST linear probe (top-1 %), small-input ResNet-18, 32 px; pretraining budget "
        f"{args.epochs:g} epochs of the 5000-image sample at global batch {args.batch}; "
        f"probe train {DATA / 'train'}, held out {args.val}; {args.jobs} run(s) at once",
        "",
        "| encoder | " + " | ".join(stages) + " | best | pretrain s | train img/s |",
        "|---|" + "---|" * (len(stages) + 3),
    ]
    for name, accs, t_train, img_s, _ in rows:
        cells = " | ".join(f"{100 * accs[s]:.1f}" for s in stages)
        lines.append(f"| {name} | {cells} | {100 * max(accs.values()):.1f} | "
                     f"{'-' if t_train is None else f'{t_train:.0f}'} | {'-' if img_s is None else f'{img_s:.1f}'} |")
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
