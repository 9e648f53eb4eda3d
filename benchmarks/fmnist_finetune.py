"""Fine-tune top-1 on Fashion-MNIST at 1%, 10% and 100% of the labels: a pretrained
encoder against the same architecture from random init, at the same budget.

    convssl pretrain --recipe recipes/quickstart_rotation.yaml --data data/fmnist/unlabeled \
        --out runs/ft_pre --max-steps 60 --set encoder.small_input=true --set data.size=32
    python benchmarks/fmnist_finetune.py --ckpt runs/ft_pre --out runs/fmnist_finetune

Each (fraction, init) is one `convssl finetune` run; ``--jobs`` runs that many at once.
Writes ``OUT/table.md`` and ``OUT/table.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="pretraining run or checkpoint")
    parser.add_argument("--out", default="runs/fmnist_finetune")
    parser.add_argument("--recipe", default=str(ROOT / "recipes/finetune_fmnist_small.yaml"))
    parser.add_argument("--train", default=str(ROOT / "data/fmnist/train"))
    parser.add_argument("--val", default=str(ROOT / "data/fmnist/test"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--jobs", type=int, default=1, help="fine-tuning runs at once")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    out = Path(args.out)

    def one(fraction: float) -> Path:
        run_dir = out / f"labels_{fraction:g}"
        cmd = [sys.executable, "-m", "convssl", "finetune", "--ckpt", args.ckpt, "--train", args.train,
               "--val", args.val, "--out", str(run_dir), "--recipe", args.recipe, "--label-fraction", str(fraction),
               "--baseline", "--quiet", *[f"--set={o}" for o in args.overrides]]
        if (run_dir / "checkpoints").is_dir():
            cmd.append("--resume")
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        return run_dir

    with ThreadPoolExecutor(args.jobs) as pool:
        run_dirs = list(pool.map(one, args.fractions))
    rows, lines = [], ["| labels | pretrained top-1 | random init top-1 | gain | steps x batch | time pretrained / random (s) |",
                       "|---|--:|--:|--:|--:|--:|"]
    for run_dir in run_dirs:
        pre = json.loads((run_dir / "report.json").read_text())
        base = json.loads((run_dir / "baseline" / "report.json").read_text())
        rows.append({"fraction": pre["labels"]["fraction"], "labels": pre["labels"]["count"],
                     "pretrained": pre["top1"], "random_init": base["top1"], "steps": pre["protocol"]["steps"],
                     "batch": pre["protocol"]["global_batch"], "seconds": [pre["seconds"], base["seconds"]]})
        lines.append(f"| {100 * pre['labels']['fraction']:g}% ({pre['labels']['count']}) | {100 * pre['top1']:.1f} | "
                     f"{100 * base['top1']:.1f} | {100 * (pre['top1'] - base['top1']):+.1f} | "
                     f"{pre['protocol']['steps']} x {pre['protocol']['global_batch']} | "
                     f"{pre['seconds']:.0f} / {base['seconds']:.0f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
