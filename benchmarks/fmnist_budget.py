"""What each pretext task is worth on the full Fashion-MNIST at one wall-clock budget.

Every task (and both multi-task recipes) pretrains on the 60,000 training images as
unlabeled shards with ``convssl pretrain --budget B`` (its own ``*_small.yaml`` recipe; the
budget picks the recipe's ``optim.short_budget`` settings), beside lightly's SimCLR at the
same budget and threads as the outside reference (``benchmarks/lightly_simclr_budget.py``,
its backbone probed through ``--init``), and the same architecture at random init. All are
probed the same way: every stage average-pooled to at most 9216 dims (``convssl probe``'s
default, as Goyal et al. 2019), logistic regression fitted on 10,000
labeled training images, evaluated on the whole 10,000-image test split, 64 px inputs.

One Markdown table (``OUT/summary.md``, also printed): per row the best stage's linear top-1
with its 95% bootstrap interval, the paired gain over random init at that stage with its
paired interval and verdict, kNN@20 there, images seen, training img/s, planned and actual
training time; then convssl's SimCLR against lightly's (each at its best stage, paired over
the same test images).

Encoder and sizes, chosen so a budget of minutes on one CPU thread counts: ResNet-18 with
its ImageNet stem (7x7 stride-2 conv and max-pool: at 64 px its stages run at 16, 8, 4 and
2 px, about 4x fewer FLOPs per image than the small-input stem at 32 px); 64 px inputs for
the whole-image tasks; SparK at 96 px (its mask grid is the last stage's: 3 x 3 patches);
context prediction and jigsaw at 128 px, so their 36 px patches keep all four stages.

    python benchmarks/fmnist_budget.py --budget 10m --jobs 2 --out runs/fmnist_budget
    python benchmarks/fmnist_budget.py --smoke --out /tmp/fmnist_budget_smoke   # 2 steps each

Runs already done in OUT (a probe report present) are kept, so a stopped benchmark continues.
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
sys.path.insert(0, str(ROOT / "ssl"))

from convssl.eval.bootstrap import paired_differences  # noqa: E402
from convssl.eval.compare import load_probe_report, paired_gains  # noqa: E402
from convssl.eval.correctness import unpack_bits  # noqa: E402
from convssl.eval.features import MAX_DIMS  # noqa: E402
from convssl.eval.verdict import classify, format_difference, format_interval, interval_of  # noqa: E402

PROBE_SIZE = 64
MEAN, STD = "0.286", "0.353"
# task -> (recipe, training input size, global batch, extra --set keys)
TASKS = {
    "simclr": ("simclr_resnet18_small.yaml", 64, 128, []),
    "rotation": ("rotation_resnet18_small.yaml", 64, 64, []),
    "moco": ("moco_resnet18_small.yaml", 64, 128, []),
    "context": ("context_resnet18_small.yaml", 128, 32, ["task.patch=0.85"]),
    "jigsaw": ("jigsaw_resnet18_small.yaml", 128, 32, []),
    "spark": ("spark_resnet18_small.yaml", 96, 64, ["train.image_every=0"]),
    "spark+rotation": ("multi_spark_rotation_small.yaml", 96, 32, ["train.image_every=0"]),
    "simclr+rotation": ("multi_simclr_rotation_small.yaml", 64, 64, []),
    "byol": ("byol_resnet18_small.yaml", 64, 128, []),
    "barlow_twins": ("barlow_twins_resnet18_small.yaml", 64, 128, []),
    "vicreg": ("vicreg_resnet18_small.yaml", 64, 128, []),
    "dino": ("dino_resnet18_small.yaml", 64, 64, ["task.crops.local_size=40"]),  # 40 px keeps the ImageNet stem's stages
}
# Continued pretraining: rotation from lightly's SimCLR backbone (a weight file from another
# library), at --continued-budget; its verdict is against those starting weights.
CONTINUED = "rotation continued"
CONTINUED_RECIPE = ("rotation_resnet18_continued.yaml", 64, 64, [])
LIGHTLY = "lightly simclr"
RANDOM = "random init"
DEFAULT_ORDER = ["simclr", LIGHTLY, *[t for t in TASKS if t != "simclr"], CONTINUED]  # the SimCLRs side by side


def run(cmd: list[str], threads: int, log: Path) -> float:
    """Run ``cmd`` with ``threads`` torch threads, its output to ``log``; seconds taken."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": f"{ROOT / 'ssl'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}; see {log}")
    return time.perf_counter() - t0


def convssl(*args: str) -> list[str]:
    return [sys.executable, "-m", "convssl", *args]


def training_record(run_dir: Path, batch: int) -> dict:
    """Images seen, img/s and time from a convssl run's metrics.jsonl and config.yaml."""
    import yaml

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    logged = [m for m in metrics if "img_per_s" in m]
    steps = max(m["step"] for m in logged)
    seconds, last = 0.0, 0
    for m in logged:  # each window's steps at its measured rate
        seconds += (m["step"] - last) * batch / m["img_per_s"]
        last = m["step"]
    budget = (yaml.safe_load((run_dir / "config.yaml").read_text()).get("run") or {}).get("budget") or {}
    return {"steps": steps, "images_seen": steps * batch, "train_seconds": seconds + budget.get("timing_seconds", 0.0),
            "img_per_s": steps * batch / seconds, "budget_seconds": budget.get("seconds"),
            "short_budget": budget.get("short_budget")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/fmnist_budget")
    parser.add_argument("--budget", default="10m", help="pretraining budget per run (convssl pretrain --budget)")
    parser.add_argument("--continued-budget", default="5m", help=f"budget of the {CONTINUED!r} row")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--probe-dims", type=int, default=MAX_DIMS,
                        help="convssl probe --max-dims: each stage average-pooled to at most this many dims "
                             "(default %(default)s, the probe's own); 0 pools globally (the protocol of most SSL papers). "
                             "Another value probes again into probe_dims<N>/ beside the default's probe/")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_ORDER, choices=[*TASKS, LIGHTLY, CONTINUED],
                        help="rows to run (default all; convssl's and lightly's SimCLR first, side by side)")
    parser.add_argument("--data", default="runs/fmnist_full",
                        help="folder for the shards: unlabeled/ (60k), train10k/ (labeled), test/ (10k); written if absent")
    parser.add_argument("--smoke", action="store_true",
                        help="2 steps per run and the embedded 1000/3000-image probe sets: checks that every row runs")
    args = parser.parse_args()
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    if args.smoke:
        unlabeled, train, val = (ROOT / "data/fmnist/unlabeled", ROOT / "data/fmnist/train",
                                 f"{ROOT / 'data/fmnist/test'}::{ROOT / 'data/fmnist/holdout'}")
    else:
        unlabeled, train, val = data / "unlabeled", data / "train10k", str(data / "test")
        for sub, extra in (("unlabeled", ["fashion-mnist:train", "--unlabeled"]),
                           ("train10k", ["fashion-mnist:train", "--stop", "10000"]), ("test", ["fashion-mnist:test"])):
            if not (data / sub / "manifest.json").exists():
                run(convssl("shards", *extra, str(data / sub), "--maxcount", "5000"), 1, logs / "shards.log")
    probe_args = ["--train", str(train), "--val", val, "--size", str(PROBE_SIZE), "--quiet",
                  "--max-dims", str(args.probe_dims)]
    probe_dir = f"probe{dims_suffix(args.probe_dims)}"
    length = ["--max-steps", "2"] if args.smoke else ["--budget", args.budget]

    def probe(name: str, target: list[str]) -> None:
        folder = out / name.replace(" ", "_") / probe_dir
        if not (folder / "report.json").exists():
            run(convssl("probe", *target, *probe_args, "--out", str(folder)), args.threads, logs / f"{name}.log")

    def random_init() -> None:
        probe(RANDOM, ["--encoder", "torchvision:resnet18", "--in-chans", "1", "--mean", MEAN, "--std", STD])

    def task(name: str) -> None:
        run_dir = out / name.replace(" ", "_")
        if name == LIGHTLY:
            if not (run_dir / "run.json").exists():
                run([sys.executable, str(ROOT / "benchmarks/lightly_simclr_budget.py"), "--out", str(run_dir),
                     "--size", str(PROBE_SIZE)] + (["--max-steps", "2"] if args.smoke else ["--budget", args.budget]),
                    args.threads, logs / f"{name}.log")
            probe(name, ["--encoder", "torchvision:resnet18", "--in-chans", "1", "--mean", MEAN, "--std", STD,
                         "--init", str(run_dir / "backbone.pth")])
            return
        recipe, size, batch, extra = CONTINUED_RECIPE if name == CONTINUED else TASKS[name]
        if not (run_dir / "config.yaml").exists() or not list((run_dir / "checkpoints").glob("*.pt")):
            sets = [f"encoder.small_input=false", f"encoder.input_size={size}", f"data.size={size}",
                    f"data.batch_size={batch}", "train.ckpt_every=0", "train.log_every=10", *extra]
            init, length_here = [], list(length)
            if name == CONTINUED:
                init = ["--init", str(out / LIGHTLY.replace(" ", "_") / "backbone.pth")]
                if not args.smoke:
                    length_here = ["--budget", args.continued_budget]
            run(convssl("pretrain", "--recipe", str(ROOT / "recipes" / recipe), "--data", str(unlabeled),
                        "--out", str(run_dir), *length_here, *init, "--quiet",
                        *[x for kv in sets for x in ("--set", kv)]), args.threads, logs / f"{name}.log")
        probe(name, ["--ckpt", str(run_dir)])

    jobs = [(name, lambda n=name: task(n)) for name in args.tasks] + [(RANDOM, random_init)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {name: pool.submit(fn) for name, fn in jobs}
        failed = {}
        for name, future in futures.items():
            try:
                future.result()
            except Exception as exc:  # one failed row must not lose the others
                failed[name] = str(exc)
    text = summarize(out, args, failed, time.perf_counter() - t0)
    (out / f"summary{dims_suffix(args.probe_dims)}.md").write_text(text + "\n")
    print("\n" + text)


def dims_suffix(dims: int) -> str:
    """What another --probe-dims than the probe's default adds to the probe folder and summary names."""
    return "" if dims == MAX_DIMS else f"_dims{dims}"


def best_stage(report: dict) -> dict:
    return max(report["stages"], key=lambda s: s["linear_top1"])


def summarize(out: Path, args, failed: dict, seconds: float) -> str:
    probe_dir = f"probe{dims_suffix(args.probe_dims)}"
    base, _ = load_probe_report(out / "random_init" / probe_dir)
    pooling = "pooled globally" if args.probe_dims == 0 else f"average-pooled to <= {args.probe_dims} dims"
    n = base["heldout"]["count"]
    lines = [
        f"Fashion-MNIST, pretraining budget {args.budget} per run ({args.jobs} runs at once, {args.threads} torch "
        f"thread(s) each); probe: every stage {pooling}, logistic regression on "
        f"{base['counts']['train']:,} training images, {n} held-out test images, {PROBE_SIZE} px; "
        "95% bootstrap intervals; gain = paired difference to random init at the row's best stage.",
        "",
        "| pretraining | train px | best stage | linear top-1 | gain over random init | verdict | kNN@20 | "
        "images seen | img/s | planned s | actual s |",
        "|---|--:|---|--:|--:|---|--:|--:|--:|--:|--:|",
    ]
    b = best_stage(base)
    lines.append(f"| {RANDOM} | {PROBE_SIZE} | {b['name']} | {format_interval(interval_of(b.get('linear_ci'), b['linear_top1']))}"
                 f" | | | {100 * b['knn20']:.1f} | 0 | | | |")
    reports = {}
    for name in [t for t in DEFAULT_ORDER if (out / t.replace(" ", "_") / probe_dir / "report.json").exists()
                 or t in args.tasks]:
        folder = out / name.replace(" ", "_")
        if name in failed or not (folder / probe_dir / "report.json").exists():
            lines.append(f"| {name} | failed: {failed.get(name, 'no probe report')[:120]} |" + " |" * 9)
            continue
        report, _ = load_probe_report(folder / probe_dir)
        reports[name] = report
        s = best_stage(report)
        gains = dict(paired_gains(report, base)[0])
        gain = gains[s["name"]]
        if name == LIGHTLY:
            rec = json.loads((folder / "run.json").read_text())
            size, train = PROBE_SIZE, {"images_seen": rec["images_seen"], "img_per_s": rec["img_per_s"],
                                       "train_seconds": rec["seconds"], "budget_seconds": rec["budget_seconds"]}
        else:
            _, size, batch, _ = CONTINUED_RECIPE if name == CONTINUED else TASKS[name]
            size, train = size, training_record(folder, batch)
        planned = train.get("budget_seconds")
        lines.append(
            f"| {name} | {size} | {s['name']} | {format_interval(interval_of(s.get('linear_ci'), s['linear_top1']))} | "
            f"{format_difference(gain)} | {classify(gain)} | {100 * s['knn20']:.1f} | {train['images_seen']:,} | "
            f"{train['img_per_s']:.1f} | {'' if planned is None else f'{planned:.0f}'} | {train['train_seconds']:.0f} |")
    pays = [name for name, r in reports.items() if name not in (LIGHTLY, CONTINUED)
            and classify(dict(paired_gains(r, base)[0])[best_stage(r)["name"]]) == "pays"]
    lines += ["", f"Tasks whose best stage pays over random init: {len(pays)} ({', '.join(pays) or 'none'})."]
    if "simclr" in reports and LIGHTLY in reports:
        ours, theirs = best_stage(reports["simclr"]), best_stage(reports[LIGHTLY])
        (diff,) = paired_differences(unpack_bits(ours["correct"]["linear"], n),
                                     unpack_bits(theirs["correct"]["linear"], n))
        lines.append(f"convssl SimCLR ({ours['name']}) minus lightly SimCLR ({theirs['name']}), paired over the same "
                     f"{n} images: {format_difference(diff)} ({classify(diff)}).")
    if CONTINUED in reports and LIGHTLY in reports:
        ours, start = best_stage(reports[CONTINUED]), best_stage(reports[LIGHTLY])
        (diff,) = paired_differences(unpack_bits(ours["correct"]["linear"], n),
                                     unpack_bits(start["correct"]["linear"], n))
        lines.append(f"{CONTINUED} ({args.continued_budget} from lightly's SimCLR backbone, {ours['name']}) against its "
                     f"starting weights ({start['name']}), paired: {format_difference(diff)} ({classify(diff)}).")
    lines.append(f"Whole benchmark: {seconds / 60:.0f} min wall.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
