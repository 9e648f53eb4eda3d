"""``convssl quickstart``: pretrain on the embedded sample, probe, compare with random init.

The README's main command. Everything runs on the Fashion-MNIST sample committed under
``data/fmnist`` (no download): pretrain with a recipe, linear-probe the pretrained
encoder and the same architecture at random init, print both side by side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the source checkout (editable install)


def _default(relative: str) -> str:
    """A path under the current folder if it exists there, else under the checkout."""
    return relative if Path(relative).exists() else str(ROOT / relative)


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", default=_default("recipes/quickstart_rotation.yaml"),
                        help="recipe to pretrain with (default: recipes/quickstart_rotation.yaml)")
    parser.add_argument("--data", default=_default("data/fmnist"),
                        help="folder holding unlabeled/, train/, test/ and holdout/ shards (default: data/fmnist)")
    parser.add_argument("--val", default=None,
                        help="held-out labeled shards to probe on (default: DATA/test::DATA/holdout, "
                             "3000 images; DATA/test alone when there is no holdout/)")
    parser.add_argument("--out", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's length")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default=None)


def run(args) -> int:
    from convssl.data.urls import resolve_shards
    from convssl.encoders import build_encoder
    from convssl.eval.probe import probe
    from convssl.recipe import load_recipe
    from convssl.train import checkpoint as ckpt_io
    from convssl.train.state import seed_all
    from convssl.train.trainer import pretrain

    data, out = Path(args.data), Path(args.out)
    overrides = list(args.overrides) + ([f"train.max_steps={args.max_steps}"] if args.max_steps else [])
    recipe = load_recipe(args.recipe, overrides)
    val = args.val or "::".join(str(data / s) for s in ("test", "holdout") if (data / s).exists()) or str(data / "test")
    for spec in (str(data / "train"), val):  # a wrong probe path fails now, not after the pretraining
        resolve_shards(spec)
    resume = ckpt_io.latest(out / "checkpoints") is not None
    t0 = time.perf_counter()
    print(f"[1/3] pretraining {recipe.task['name']} on {data / 'unlabeled'} -> {out}"
          + (" (resuming)" if resume else ""))
    summary = pretrain(recipe, str(data / "unlabeled"), out, resume=resume, device=args.device)
    t_train = time.perf_counter() - t0

    d = recipe.data
    common = dict(size=d.size, channels=d.channels, mean=d.mean, std=d.std)
    print(f"[2/3] linear probe of the pretrained encoder (train {data / 'train'}, held out {val})")
    encoder, _ = ckpt_io.load_encoder(summary["checkpoint"], trust=[recipe.encoder.spec])
    trained = probe(encoder, str(data / "train"), val, out_dir=out / "probe", **common)
    print("[3/3] linear probe of the same encoder at random init (the baseline)")
    seed_all(recipe.train.seed)
    baseline = probe(build_encoder(recipe.encoder), str(data / "train"), val,
                     out_dir=out / "probe_random_init", **common)

    rows = _table(trained, baseline)
    text = "\n".join([
        f"# convssl quickstart: {recipe.task['name']} on {recipe.encoder.spec}",
        f"pretraining: {summary['steps']} steps x {d.batch_size} images, {t_train:.0f} s, "
        f"{summary['img_per_s']:.1f} img/s; total {time.perf_counter() - t0:.0f} s; "
        f"probed on {trained['counts']['val']} held-out images",
        "",
        "| stage | linear top-1 pretrained | linear top-1 random init | kNN@20 pretrained | kNN@20 random init |",
        "|---|---|---|---|---|",
        *rows,
    ])
    (out / "quickstart.md").write_text(text + "\n")
    (out / "quickstart.json").write_text(json.dumps({"pretrained": trained, "random_init": baseline,
                                                      "pretrain": summary}, indent=1, default=str))
    print("\n" + text)
    return 0


def _table(trained: dict, baseline: dict) -> list[str]:
    rows = []
    for a, b in zip(trained["stages"], baseline["stages"]):
        rows.append(f"| {a['name']} | {100 * a['linear_top1']:.1f} | {100 * b['linear_top1']:.1f} | "
                    f"{_pct(a.get('knn20'))} | {_pct(b.get('knn20'))} |")
    return rows


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"
