"""``convssl probe``: per-stage linear probe and kNN of a frozen encoder on labeled shards.

    convssl probe --ckpt RUN_OR_CKPT --train SHARDS --val SHARDS --out DIR
    convssl probe --encoder torchvision:resnet18 --small-input --train SHARDS --val SHARDS --out DIR

With ``--ckpt`` the input size, channels and normalisation come from the checkpoint's
recipe. ``--encoder`` probes the architecture at random init (seeded): the baseline
every pretext task must beat.

    convssl probe --ckpt RUN --train SHARDS --val SHARDS --out DIR --baseline random --baseline weights:FILE.pth

probes each baseline with the same protocol on the same images and prints, per stage, the
paired gain with its 95% interval and a verdict (pays / no gain measurable / hurts).
"""

from __future__ import annotations

import torch

from convssl.commands import add_trust_argument
from convssl.errors import ConfigError

# Grayscale default: the mean of torchvision's ImageNet channel statistics.
_DEFAULT_NORM = {3: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), 1: ((0.449,), (0.226,))}


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint file, or a run directory (its latest checkpoint)")
    source.add_argument("--encoder", metavar="SPEC",
                        help="probe this encoder at random init (torchvision:NAME, timm:NAME, pkg.module:fn)")
    parser.add_argument("--small-input", action="store_true", help="with --encoder: ResNet stem for 28-64 px images")
    parser.add_argument("--init", default=None, metavar="WEIGHTS",
                        help="with --encoder: probe these weights instead of random init (a .pth/.pt/.safetensors "
                             "state dict, a convssl checkpoint, torchvision:<WEIGHTS>, timm:pretrained; local only)")
    parser.add_argument("--in-chans", type=int, default=None,
                        help="with --encoder: input channels (default: the train shards' channels, else 3)")
    parser.add_argument("--size", type=int, default=None,
                        help="input size (default: the checkpoint's; with --encoder 224, or 32 with --small-input)")
    parser.add_argument("--train", required=True, help="labeled shards to fit the probes on (folder, manifest or pattern)")
    parser.add_argument("--val", required=True, help="labeled shards to evaluate on")
    parser.add_argument("--out", required=True, help="folder for report.json, report.md, stages.png")
    parser.add_argument("--batch-size", type=int, default=256, help="feature extraction batch (default 256)")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers (default 2)")
    parser.add_argument("--no-knn", action="store_true", help="skip the kNN evaluation")
    parser.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean (0-1 scale)")
    parser.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std (0-1 scale)")
    parser.add_argument("--max-dims", type=int, default=9216,
                        help="pool each stage to at most this many dims (0: global average only)")
    parser.add_argument("--patch-grid", type=int, default=1, metavar="N",
                        help="cut each image into N x N patches, encode each, average their features per stage "
                             "(Kolesnikov et al. 2019; for patch-trained encoders); default 1: whole images")
    parser.add_argument("--seed", type=int, default=0, help="with --encoder: random-init seed (default 0)")
    parser.add_argument("--baseline", action="append", default=[], metavar="SPEC",
                        help="also probe a baseline with the same protocol on the same images and report the paired "
                             "gain and a verdict per stage: random (the same architecture at random init, seed 0), "
                             "random:SEED, or weights:PATH (a state dict under the original model's keys: a convssl "
                             "export .pth/.safetensors, or a convssl checkpoint's encoder); repeatable")
    parser.add_argument("--resamples", type=int, default=2000,
                        help="bootstrap resamples of the val images for the 95%% intervals (>= 1000; default 2000)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_trust_argument(parser)


def run(args) -> int:
    from convssl.eval.baselines import build_baseline, parse_baseline
    from convssl.eval.probe import probe
    from convssl.eval.report import format_comparison, format_table
    from convssl.eval.status_line import StatusLine
    from convssl.writable import ensure_writable_dir

    ensure_writable_dir(args.out, "--out")  # before the encoder is built or a worker starts
    specs = [parse_baseline(b) for b in args.baseline]
    if args.resamples < 1000:
        raise ConfigError(f"--resamples {args.resamples}: percentile intervals need at least 1000 resamples")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.ckpt:
        encoder, info = _from_checkpoint(args)
    else:
        encoder, info = _random_init(args)
    mean, std = args.mean or info["mean"], args.std or info["std"]
    if len(mean) != info["channels"] or len(std) != info["channels"]:
        raise ConfigError(f"--mean and --std need {info['channels']} value(s), one per input channel; "
                          f"got {len(mean)} and {len(std)}")
    if args.encoder and not args.init and any(spec.kind == "random" and spec.seed == args.seed for spec in specs):
        raise ConfigError(f"--baseline random: the probed encoder is already random init with seed {args.seed}; "
                          "use --baseline random:SEED with another seed, or probe a checkpoint (--ckpt)")
    baselines = [build_baseline(spec, encoder.config) for spec in specs]
    encoder.to(device)
    print(f"probing {info['what']} at {info['size']} px, {info['channels']} channel(s), on {device}"
          + (f"; baselines: {', '.join(b.spec.label for b in baselines)}" if baselines else ""))
    report = probe(encoder, args.train, args.val, size=info["size"], channels=info["channels"], mean=mean, std=std,
                   out_dir=args.out, batch_size=args.batch_size, workers=args.workers, knn=not args.no_knn,
                   max_dims=args.max_dims or None, checkpoint=info.get("checkpoint"), step=info.get("step"),
                   seed=info.get("seed"), status=StatusLine(enabled=not args.quiet),
                   patch_grid=args.patch_grid, baselines=baselines, resamples=args.resamples)
    counts = report["counts"]
    print(f"{counts['train']} train / {counts['val']} val samples, {counts['classes']} classes "
          f"(chance {100 * report['chance']:.1f}%), {report['seconds']['total']:.1f} s; top-1 in %:")
    print(format_table(report))
    if report["baselines"]:
        print(f"\nlinear top-1 in %, gains in points, paired over the same {counts['val']} val images:")
        print(format_comparison(report))
    print(f"report: {args.out}/report.json, report.md, stages.png")
    return 0


def _from_checkpoint(args):
    from convssl.eval.probe import checkpoint_input

    for flag, value in (("--small-input", args.small_input), ("--in-chans", args.in_chans), ("--init", args.init)):
        if value:
            raise ConfigError(f"{flag} applies to --encoder only; with --ckpt the encoder comes from the checkpoint")
    encoder, info = checkpoint_input(args.ckpt, args.trust_encoder)
    return encoder, {**info, "what": f"{info['checkpoint']} (step {info['step']})", "size": args.size or info["size"]}


def _random_init(args):
    from convssl.encoders import build_encoder

    in_chans = args.in_chans or _shard_channels(args.train) or 3
    if in_chans not in _DEFAULT_NORM and not (args.mean and args.std):
        raise ConfigError(f"--in-chans {in_chans}: give --mean and --std (one value per channel)")
    size = args.size or (32 if args.small_input else 224)
    torch.manual_seed(args.seed)
    encoder = build_encoder(args.encoder, in_chans=in_chans, small_input=args.small_input, input_size=size)
    if args.init:
        from convssl.encoders.init_weights import apply_init

        apply_init(encoder, args.init, note=lambda message: print(f"convssl probe: {message}"))
    mean, std = _DEFAULT_NORM.get(in_chans, (None, None))
    if not (args.mean and args.std):
        print(f"normalising with mean {mean} std {std} (defaults); pass the recipe's --mean/--std for a fair baseline")
    what = f"{args.encoder} from {args.init}" if args.init else f"{args.encoder} at random init (seed {args.seed})"
    return encoder, {"what": what, "size": size, "channels": in_chans,
                     "mean": mean, "std": std, "seed": args.seed}


def _shard_channels(spec: str) -> int | None:
    """The channels the train shards' manifest records (None without a manifest)."""
    from convssl.data.urls import resolve_shards

    _, manifest = resolve_shards(spec)
    return manifest.channels if manifest is not None else None
