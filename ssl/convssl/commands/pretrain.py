"""``convssl pretrain --recipe R.yaml --data SHARDS --out RUN``; under torchrun for DDP."""

from __future__ import annotations

import argparse

from convssl.recipe import load_recipe


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", required=True, help="a recipe YAML (see recipes/)")
    parser.add_argument("--data", required=True, help="shard folder, manifest.json or brace pattern")
    parser.add_argument("--out", required=True, help="run directory (config, metrics, checkpoints)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--epochs", type=float, default=None, help="train this many epochs")
    parser.add_argument("--budget", default=None, metavar="TIME",
                        help="fit the run to wall-clock TIME (90s, 20m, 1.5h): the first steps are timed and the "
                             "step count, warm-up and schedules fixed from them (recipe key train.budget)")
    parser.add_argument("--init", default=None, metavar="WEIGHTS",
                        help="start from existing weights (recipe key encoder.init): a .pth/.pt/.safetensors state "
                             "dict, a convssl checkpoint or run dir, torchvision:<WEIGHTS> or timm:pretrained "
                             "(local caches only)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="end this invocation after N steps with a checkpoint (schedule unchanged); continue with --resume")
    parser.add_argument("--resume", nargs="?", const=True, default=False, type=_resume_mode, metavar="auto",
                        help="continue from the latest checkpoint in --out; --resume auto: continue if there is "
                             "one, else start (one command line for the first start, a requeue, a restart)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set optim.lr_per_256=0.2 (repeatable)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: GPU if present)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--monitor", default=None, metavar="SHARDS",
                        help="labeled shards for an online linear probe, kNN and collapse check "
                             "every train.monitor_every steps")


def _resume_mode(value: str) -> str:
    if value != "auto":
        raise argparse.ArgumentTypeError(f"expected nothing or 'auto', not {value!r}")
    return value


def run(args) -> int:
    from convssl.eval.monitor import monitor_callbacks
    from convssl.train.trainer import pretrain

    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.epochs is not None:
        overrides += [f"train.epochs={args.epochs}", "train.max_steps=0"] if args.max_steps is None else [f"train.epochs={args.epochs}"]
    if args.budget is not None:
        from convssl.errors import ConfigError
        from convssl.train_config import parse_budget

        if args.max_steps is not None or args.epochs is not None:
            raise ConfigError("--budget decides the number of steps: give --budget, --max-steps or --epochs, not two")
        parse_budget(args.budget)
        overrides += [f"train.budget={args.budget}", "train.max_steps=0"]
    if args.init is not None:
        overrides.append(f"encoder.init={args.init}")
    recipe = load_recipe(args.recipe, overrides)
    summary = pretrain(recipe, args.data, args.out, resume=args.resume, device=args.device,
                       progress=not args.quiet, stop_after=args.stop_after,
                       callbacks=monitor_callbacks(args.monitor, recipe))
    from convssl import dist

    if dist.from_env().is_main:
        metrics = "  ".join(f"{k} {v:.4g}" for k, v in summary["metrics"].items())
        print(f"done: {summary['steps']} steps in {summary['seconds']:.0f} s, "
              f"{summary['img_per_s']:.1f} img/s; {metrics}")
        if summary.get("monitor"):
            print(f"monitor: {summary['monitor']}")
        print(f"checkpoint: {summary['checkpoint']}")
    return 0
