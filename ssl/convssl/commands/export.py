"""``convssl export``: a checkpoint's backbone in the original model's key space.

    convssl export --ckpt RUN_OR_CKPT --out backbone.pth [--format torchvision|timm|state_dict] [--safetensors]
    convssl export --ckpt RUN_OR_CKPT --out backbone.onnx --format onnx|torchscript

Writes the weights and ``OUT.json`` (encoder, stages, input size and normalisation, the
recipe), after checking that they load into the original architecture with
``strict=True`` on every backbone key. Exits 1, listing the keys, when they do not.
``onnx`` and ``torchscript`` write a deployment file (stage maps and pooled features of a
normalised batch, dynamic batch size) whose outputs are checked against torch's.
"""

from __future__ import annotations

import sys

from convssl.commands import add_trust_argument


def add_arguments(parser) -> None:
    from convssl.exports import DEPLOY_FORMATS, FORMATS

    parser.add_argument("--ckpt", required=True, help="checkpoint file, or a run directory (its latest checkpoint)")
    parser.add_argument("--out", required=True, help="file to write (a folder: backbone.pth / .onnx / .torchscript.pt in it)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS + DEPLOY_FORMATS, default=None,
                        help="key space promised: torchvision or timm (needs such an encoder) or state_dict "
                             "(any encoder); default: the encoder's source. Or a deployment file: onnx "
                             "(needs convssl[onnx]) or torchscript")
    parser.add_argument("--safetensors", action="store_true", help="write .safetensors (needs the safetensors package)")
    add_trust_argument(parser)


def run(args) -> int:
    from convssl.exports import DEPLOY_FORMATS, ExportError, export_backbone

    if args.fmt in DEPLOY_FORMATS:
        return _deploy(args)
    try:
        sidecar = export_backbone(args.ckpt, args.out, fmt=args.fmt, safetensors=args.safetensors,
                                  trust=args.trust_encoder)
    except ExportError as exc:
        if not (exc.missing or exc.unexpected or exc.mismatched):
            raise
        print(f"convssl export: verification failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        for what, keys in (("missing", exc.missing), ("unexpected", exc.unexpected), ("mismatched", exc.mismatched)):
            for key in keys:
                print(f"  {what}: {key}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return 1
    arch = sidecar["architecture"]
    print(f"weights   {sidecar['paths']['weights']} ({sidecar['num_tensors']} tensors, "
          f"{sidecar['num_params']:,} parameters, {sidecar['key_format']} keys)")
    print(f"sidecar   {sidecar['paths']['sidecar']}")
    print(f"verified  strict=True on the backbone keys, loading into {arch['builder']}")
    for change in arch["stem_changes"]:
        print(f"          {change}")
    head = sidecar["not_exported"]["classifier head"]
    if head:
        print(f"not exported: classifier head ({', '.join(head)})")
    print(f"input     {sidecar['input']['channels']} x {sidecar['input']['size']} px, "
          f"mean {sidecar['input']['mean']}, std {sidecar['input']['std']}")
    return 0



def _deploy(args) -> int:
    from convssl.errors import ConfigError
    from convssl.exports import export_onnx, export_torchscript

    if args.safetensors:
        raise ConfigError(f"--safetensors applies to weight exports, not --format {args.fmt}")
    sidecar = (export_onnx if args.fmt == "onnx" else export_torchscript)(args.ckpt, args.out, args.trust_encoder)
    diffs = ", ".join(f"batch {b}: {d:.2g}" for b, d in sidecar["verified"]["max_abs_diff"].items())
    shape = " x ".join(str(v) for v in sidecar["inputs"][0]["shape"])
    print(f"{args.fmt:<9} {sidecar['paths']['file']}" + (f" (opset {sidecar['opset']})" if sidecar.get("opset") else ""))
    print(f"sidecar   {sidecar['paths']['sidecar']}")
    print(f"input     image: {shape} float32, normalised with mean {sidecar['input']['mean']}, "
          f"std {sidecar['input']['std']}")
    print(f"outputs   {', '.join(o['name'] for o in sidecar['outputs'])}")
    print(f"verified  max abs difference from torch: {diffs}")
    return 0
