"""``convssl finetune``: full fine-tuning with a fresh head on a (few-)label subset.

    convssl finetune --ckpt RUN_OR_CKPT --train SHARDS --val SHARDS --out DIR
                     [--label-fraction 0.01|0.1|1.0] [--baseline] [--recipe FT.yaml] [--set key=value]
    torchrun --nproc-per-node 2 -m convssl finetune ...

``--baseline`` then runs the same fine-tuning (same labels, schedule, head
initialisation) from a random-init encoder into ``DIR/baseline`` and writes
``DIR/comparison.md``: the gain from pretraining in one table, with 95% intervals (paired
bootstrap over the val images) and a verdict. ``--label-seeds N`` repeats it for N label
draws (``DIR/label-seed-S``) and writes ``DIR/label_seeds.md``: the spread across draws.
"""

from __future__ import annotations

from pathlib import Path

from convssl.commands import add_trust_argument


def add_arguments(parser) -> None:
    parser.add_argument("--ckpt", required=True,
                        help="pretraining checkpoint, or its run directory (the latest checkpoint)")
    parser.add_argument("--train", required=True, help="labeled shards to fine-tune on (folder, manifest or pattern)")
    parser.add_argument("--val", required=True, help="labeled shards to report top-1 on")
    parser.add_argument("--out", required=True, help="run directory (config, labels, checkpoints, report)")
    parser.add_argument("--label-fraction", type=float, default=None,
                        help="share of the training labels, class-balanced (e.g. 0.01, 0.1; default 1.0)")
    parser.add_argument("--label-seed", type=int, default=None, help="seed of the label subset (default 0)")
    parser.add_argument("--label-seeds", type=int, default=1, metavar="N",
                        help="repeat the run (and its --baseline) for N label draws, seeds label-seed ... "
                             "label-seed+N-1, each in OUT/label-seed-S, and report the spread across draws "
                             "(OUT/label_seeds.md); default 1: one draw, in OUT")
    parser.add_argument("--baseline", action="store_true",
                        help="also fine-tune the same architecture from random init into OUT/baseline and compare")
    parser.add_argument("--recipe", default=None, help="a fine-tuning recipe (see recipes/finetune_*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set optim.lr_per_256=0.002 (repeatable)")
    parser.add_argument("--epochs", type=float, default=None, help="passes over the label subset")
    parser.add_argument("--max-steps", type=int, default=None, help="steps (wins over --epochs)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="end this invocation after N steps with a checkpoint (schedule unchanged); continue with --resume")
    parser.add_argument("--resume", action="store_true", help="continue the run(s) in --out from their latest checkpoint")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: GPU if present)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    add_trust_argument(parser)


def load_settings(recipe: str | None, overrides: list[str]):
    """The ``FinetuneRecipe`` from an optional YAML file and ``section.key=value`` overrides."""
    from convssl.finetune.config import load_finetune_recipe

    return load_finetune_recipe(recipe, overrides)


def run(args) -> int:
    from convssl import dist

    overrides = list(args.overrides)
    for key, value in (("data.label_fraction", args.label_fraction), ("data.label_seed", args.label_seed),
                       ("train.epochs", args.epochs), ("train.max_steps", args.max_steps)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.label_seeds < 1:
        from convssl.errors import ConfigError

        raise ConfigError(f"--label-seeds {args.label_seeds}: give at least 1")
    cfg = load_settings(args.recipe, overrides)
    out = Path(args.out)
    main = dist.from_env().is_main
    try:
        if args.label_seeds == 1:
            runs = [("pretrained", out)] + ([("random", out / "baseline")] if args.baseline else [])
            return _run_all(args, cfg, out, runs, main)[0]
        draws = []
        for seed in range(cfg.data.label_seed, cfg.data.label_seed + args.label_seeds):
            seed_cfg = load_settings(args.recipe, overrides + [f"data.label_seed={seed}"])
            seed_out = out / f"label-seed-{seed}"
            runs = [("pretrained", seed_out)] + ([("random", seed_out / "baseline")] if args.baseline else [])
            if main:
                print(f"label draw {seed - cfg.data.label_seed + 1}/{args.label_seeds} (label seed {seed}) -> {seed_out}")
            code, reports = _run_all(args, seed_cfg, seed_out, runs, main)
            if code or not all(r.get("finished") for r in reports.values()):
                return code
            draws.append(reports)
        if main:
            from convssl.finetune.report import write_label_seeds

            print(write_label_seeds(draws, out)["md"].read_text())
        return 0
    finally:
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            tdist.destroy_process_group()


def _run_all(args, cfg, out: Path, runs, main: bool) -> tuple[int, dict]:
    """Fine-tune each of ``runs`` (``(init, run_dir)``) on one label subset; ``(exit code, reports)``."""
    from convssl import checkpoint as ckpt_io
    from convssl.finetune.report import write_comparison
    from convssl.finetune.run import finetune

    reports = {}
    for init, run_dir in runs:
        if main:
            print(f"fine-tuning from {'the checkpoint' if init == 'pretrained' else 'random init'} -> {run_dir}")
        resume = args.resume and ckpt_io.latest(run_dir / "checkpoints") is not None
        reports[init] = finetune(args.ckpt, args.train, args.val, run_dir, cfg, init=init, labels=out / "labels",
                                 resume=resume, device=args.device, progress=not args.quiet,
                                 stop_after=args.stop_after, trust=args.trust_encoder)
        if not reports[init]["finished"]:
            if main:
                print("stopped early; continue with the same command plus --resume")
            return 0, reports
        if main:
            r = reports[init]
            print(f"{init}: top-1 {100 * r['top1']:.2f}% on {r['counts']['val']} val samples after "
                  f"{r['protocol']['steps']} steps, {r['labels']['count']} labels ({r['seconds']:.0f} s); "
                  f"{run_dir / 'report.md'}")
    if main and args.baseline:
        paths = write_comparison(reports["pretrained"], reports["random"], out, out / "baseline")
        print(paths["md"].read_text())
    return 0, reports
