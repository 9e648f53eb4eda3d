"""``convssl quickstart``: pretrain on the embedded sample, probe, compare with random init.

The README's main command. Everything runs on the Fashion-MNIST sample committed under
``data/fmnist`` (no download): pretrain with a recipe, then one ``probe`` of the pretrained
encoder with the same architecture at random init as its baseline (``--baseline random``:
same protocol, same held-out images), and end with the table, 95% intervals and the
verdict per stage: does pretraining pay?
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the source checkout (editable install)
HELD_OUT = ("test", "holdout", "test_rest")  # data/fmnist: test images 0-999, 1000-2999, 3000-9999


def _default(relative: str) -> str:
    """A path under the current folder if it exists there, else under the checkout."""
    return relative if Path(relative).exists() else str(ROOT / relative)


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", default=_default("recipes/quickstart_rotation.yaml"),
                        help="recipe to pretrain with (default: recipes/quickstart_rotation.yaml)")
    parser.add_argument("--data", default=_default("data/fmnist"),
                        help="folder holding unlabeled/, train/, test/ and holdout/ shards (default: data/fmnist)")
    parser.add_argument("--val", default=None,
                        help="held-out labeled shards to probe on (default: DATA/test::DATA/holdout::DATA/test_rest, "
                             "the whole 10,000-image Fashion-MNIST test split; those of them that exist)")
    parser.add_argument("--out", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's length")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set data.size=48 (repeatable)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: GPU if present)")


def run(args) -> int:
    from convssl.data.urls import resolve_shards
    from convssl.eval.baselines import BaselineSpec, build_baseline
    from convssl.eval.probe import probe
    from convssl.eval.status_line import StatusLine
    from convssl.recipe import load_recipe
    from convssl import checkpoint as ckpt_io
    from convssl.encoders.from_checkpoint import load_encoder
    from convssl.train.trainer import pretrain

    data, out = Path(args.data), Path(args.out)
    overrides = list(args.overrides) + ([f"train.max_steps={args.max_steps}"] if args.max_steps else [])
    recipe = load_recipe(args.recipe, overrides)
    # all 10,000 test images by default: at 3000 the best stage's gain (+1.0) was 1 image from an interval touching 0
    val = args.val or "::".join(str(data / s) for s in HELD_OUT if (data / s).exists()) or str(data / "test")
    for spec in (str(data / "train"), val):  # a wrong probe path fails now, not after the pretraining
        resolve_shards(spec)
    resume = ckpt_io.latest(out / "checkpoints") is not None
    t0 = time.perf_counter()
    print(f"[1/2] pretraining {recipe.task.name} on {data / 'unlabeled'} -> {out}"
          + (" (resuming)" if resume else ""))
    summary = pretrain(recipe, str(data / "unlabeled"), out, resume=resume, device=args.device)
    t_train = time.perf_counter() - t0

    d = recipe.data
    print(f"[2/2] linear probe and kNN of the pretrained encoder and of the same architecture at random init "
          f"(seed {recipe.train.seed}), same protocol, same images (train {data / 'train'}, held out {val})")
    encoder, _ = load_encoder(summary["checkpoint"], trust=[recipe.encoder.spec])
    random_init = build_baseline(BaselineSpec("random", seed=recipe.train.seed), encoder.config)
    report = probe(encoder, str(data / "train"), val, out_dir=out / "probe", size=d.size, channels=d.channels,
                   mean=d.mean, std=d.std, checkpoint=summary["checkpoint"], step=summary["steps"],
                   baselines=[random_init], status=StatusLine())
    text = summary_text(report, recipe, summary, t_train, time.perf_counter() - t0)
    (out / "quickstart.md").write_text(text + "\n")
    (out / "quickstart.json").write_text(json.dumps({"probe": report, "verdicts": report["verdicts"],
                                                      "pretrain": summary}, indent=1, default=str))
    print("\n" + text)
    return 0


def summary_text(report: dict, recipe, summary: dict, t_train: float, t_total: float) -> str:
    """The quickstart's closing Markdown: the table with intervals, then the verdict per stage,
    then one line on the best stage."""
    from convssl.eval.report import with_interval
    from convssl.eval.verdict import format_difference, interval_of

    baseline = report["baselines"][0]
    n = report["counts"]["val"]
    rows = []
    for s, stage in enumerate(report["stages"]):
        base, diff = baseline["stages"][s], baseline["differences"][s]
        rows.append(f"| {stage['name']} | {with_interval(stage, 'linear')} | {with_interval(base, 'linear')} | "
                    f"{format_difference(interval_of(diff['linear'], 0.0))} | {with_interval(stage, 'knn20')} | "
                    f"{with_interval(base, 'knn20')} |")
    best = max(range(len(report["stages"])), key=lambda s: report["stages"][s]["linear_top1"])
    d = recipe.data
    return "\n".join([
        f"# convssl quickstart: {recipe.task.name} on {recipe.encoder.spec}",
        f"pretraining: {summary['steps']} steps x {d.batch_size} images, {t_train:.0f} s, "
        f"{summary['img_per_s']:.1f} img/s; total {t_total:.0f} s; probed on {n} held-out images, "
        f"95% intervals from {report['bootstrap']['resamples']} bootstrap resamples of them",
        "",
        "| stage | linear top-1 pretrained | linear top-1 random init | gain (points, paired) | kNN@20 pretrained "
        "| kNN@20 random init |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Does pretraining pay? (linear top-1, paired bootstrap over the same held-out images)",
        *(f"  {d['line']}" for d in baseline["differences"]),
        f"verdict at the best stage: {baseline['differences'][best]['line']}",
    ])
