"""``convssl embed``: a 2-D map (UMAP, t-SNE or PCA) of an encoder's features, coloured by label.

    convssl embed --ckpt RUN_OR_CKPT --data SHARDS --out DIR [--method auto|umap|tsne|pca] [--stage NAME]

Writes ``DIR/embedding.png``, ``embedding.csv`` and ``embed.json``. The input size,
channels and normalisation come from the checkpoint's recipe.
"""

from __future__ import annotations

import torch

from convssl.commands import add_trust_argument


def add_arguments(parser) -> None:
    from convssl.eval.embed import METHODS

    parser.add_argument("--ckpt", required=True, help="checkpoint file, or a run directory (its latest checkpoint)")
    parser.add_argument("--data", required=True, help="shards to map (labeled ones are coloured by class)")
    parser.add_argument("--out", required=True, help="folder for embedding.png, embedding.csv, embed.json")
    parser.add_argument("--method", choices=METHODS, default="auto",
                        help="umap (umap-learn), tsne (scikit-learn), pca; auto: the first installed (default)")
    parser.add_argument("--stage", default=None, help="stage to map (default: the last)")
    parser.add_argument("--max-samples", type=int, default=2000, help="samples to map (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample choice and the map (default 0)")
    parser.add_argument("--batch-size", type=int, default=256, help="feature extraction batch (default 256)")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers (default 2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_trust_argument(parser)


def run(args) -> int:
    from convssl.data.urls import resolve_shards
    from convssl.eval.embed import embed, pick_method
    from convssl.encoders.from_checkpoint import load_encoder
    from convssl.encoders.input_spec import input_spec

    pick_method(args.method)  # a missing package fails before any work
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder, ckpt = load_encoder(args.ckpt, args.trust_encoder)
    spec = input_spec(ckpt, encoder)
    _, manifest = resolve_shards(args.data)
    record = embed(encoder.to(device), args.data, size=spec.size, channels=spec.channels,
                   mean=spec.mean, std=spec.std, out_dir=args.out, method=args.method, stage=args.stage,
                   max_samples=args.max_samples, batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                   classes=manifest.classes if manifest is not None else (),
                   title=f"{encoder.config.spec if encoder.config else 'encoder'} step {ckpt.get('step')}")
    agreement = record["neighbour_label_agreement"]
    print(f"{record['method'].upper()} of {record['count']} samples, stage {record['stage']} "
          f"({record['feature_dims']} dims), {record['seconds']['total']:.1f} s"
          + (f"; {100 * agreement:.1f}% of {10} nearest map neighbours share the label" if agreement is not None else ""))
    print(f"map: {record['paths']['png']} (coordinates: {record['paths']['csv']})")
    return 0
