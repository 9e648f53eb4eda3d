"""``convssl info SPEC``: an encoder's stages, channels, reductions and size."""

from __future__ import annotations

import torch

from convssl.encoders import build_encoder
from convssl.errors import ConfigError
from convssl.input_memory import check_input_fits


def add_arguments(parser) -> None:
    parser.add_argument("spec", help="torchvision:NAME, timm:NAME or package.module:callable")
    parser.add_argument("--size", type=int, default=None, help="input size (default 224, or 32 with --small-input)")
    parser.add_argument("--small-input", action="store_true", help="ResNet stem for 28-64 px images")
    parser.add_argument("--in-chans", type=int, default=3, help="input channels (default 3)")


def run(args) -> int:
    size = args.size if args.size is not None else (32 if args.small_input else 224)
    if size < 1 or args.in_chans < 1:
        raise ConfigError(f"--size and --in-chans must be at least 1, got {size} and {args.in_chans}")
    check_input_fits(1, args.in_chans, size, torch.device("cpu"), names="--size")
    encoder = build_encoder(args.spec, in_chans=args.in_chans, small_input=args.small_input, input_size=size)
    with torch.no_grad():
        maps = encoder.eval()(torch.zeros(1, args.in_chans, size, size))
    n_params = sum(p.numel() for p in encoder.parameters())
    print(f"encoder   {args.spec}" + ("  (small-input stem)" if args.small_input else ""))
    print(f"input     {args.in_chans} x {size} x {size}")
    print(f"params    {n_params:,} (backbone, head excluded)")
    print(f"head      {', '.join(encoder.head) or '-'} (dropped)")
    print(f"{'stage':<28}{'channels':>9}{'reduction':>10}{'output':>14}")
    for stage, m in zip(encoder.stages, maps):
        print(f"{stage.name:<28}{stage.channels:>9}{stage.reduction:>10}{f'{m.shape[-2]} x {m.shape[-1]}':>14}")
    return 0
