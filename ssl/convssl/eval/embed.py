"""A 2-D map of an encoder's features, coloured by label: for looking rather than reading.

Features are one stage's maps (the last by default), globally average-pooled, from the
evaluation view of up to ``max_samples`` samples; standardised, reduced to 50 dimensions
by PCA (as is usual before t-SNE, van der Maaten & Hinton 2008), then to 2 by:

- ``umap``: UMAP (McInnes et al. 2018; the ``umap-learn`` package), n_neighbors 15,
  min_dist 0.1 (its defaults);
- ``tsne``: t-SNE (scikit-learn), PCA initialisation, perplexity 30 (or less for few points);
- ``pca``: the first two principal components (torch's SVD, no extra package);
- ``auto``: the first of these that is installed.

Writes ``embedding.png`` (drawn with PIL), ``embedding.csv`` (key, label, x, y) and
``embed.json``, which also gives the share of each point's 10 nearest neighbours in the
map that have its label: a number for how well the map separates the classes.

Legend: N samples, D feature dims.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from convssl.views.crops import ResizeCenterCrop
from convssl.data.loader import make_loader
from convssl.data.shard_dataset import ShardDataset
from convssl.views.crop_views import Named
from convssl.data.urls import resolve_shards
from convssl.encoders import Encoder
from convssl.errors import ConfigError, DataError
from convssl.eval.features import eval_resize, extract_features
from convssl.workers import loader_batches

FORMAT = "convssl-embed/1"
METHODS = ("auto", "umap", "tsne", "pca")
PCA_DIMS = 50
NEIGHBOURS = 10
# Tableau's 10 categorical colours, then 10 lighter ones; more classes cycle.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
           (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
           (219, 219, 141), (158, 218, 229)]
UNLABELED = -1


def pick_method(method: str) -> str:
    """``auto`` -> the first of umap, tsne, pca whose package is installed; check the others."""
    if method not in METHODS:
        raise ConfigError(f"unknown embedding method {method!r}; choose one of {', '.join(METHODS)}")
    have = {"umap": importlib.util.find_spec("umap") is not None,
            "tsne": importlib.util.find_spec("sklearn") is not None, "pca": True}
    if method == "auto":
        return next(m for m in ("umap", "tsne", "pca") if have[m])
    if not have[method]:
        package = {"umap": "umap-learn", "tsne": "scikit-learn"}[method]
        raise ConfigError(f"--method {method} needs {package}: pip install 'convssl[embed]' (or pip install "
                          f"{package}); --method pca needs nothing more")
    return method


def read_batches(spec: str, *, size: int, channels: int, max_samples: int, batch_size: int, workers: int,
                 seed: int):
    """``(img_uint8_BCHW, cls_B, keys)`` of up to ``max_samples`` samples (eval view).

    The samples pass through a shuffle buffer of ``4 * max_samples`` (seeded), so the map
    is not just the first shard's; unlabeled shards get class ``UNLABELED``.
    """
    urls, manifest = resolve_shards(spec)
    labeled = bool(manifest.labeled) if manifest is not None else False
    dataset = ShardDataset(urls, transform=Named(ResizeCenterCrop(size, resize=eval_resize(size))),
                           channels=channels, labeled=labeled, shuffle_buffer=4 * max_samples, seed=seed,
                           manifest=manifest)
    left = max_samples
    loader = make_loader(dataset, min(batch_size, max_samples), workers, persistent_workers=False)
    with loader_batches(loader) as batches:
        for batch in batches:
            take = min(left, len(batch["key"]))
            cls = batch["cls"] if labeled else torch.full((len(batch["key"]),), UNLABELED)
            yield batch["img"][:take], cls[:take], batch["key"][:take]
            left -= take
            if left <= 0:
                return


def principal_components(x_ND: torch.Tensor, k: int) -> torch.Tensor:
    """The projections on the first ``k`` principal components ([N, k], float64 SVD)."""
    x = x_ND.double() - x_ND.double().mean(0)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    return (u[:, :k] * s[:k]).float()


def to_2d(feats_ND: torch.Tensor, method: str, seed: int) -> torch.Tensor:
    """Standardise, PCA to at most ``PCA_DIMS``, then ``method`` to [N, 2]."""
    n = feats_ND.shape[0]
    x = (feats_ND - feats_ND.mean(0)) / feats_ND.std(0).clamp_min(1e-6)
    if method == "pca":
        return principal_components(x, 2)
    reduced = principal_components(x, min(PCA_DIMS, x.shape[1], n)).numpy()
    # scikit-learn's and numba's OpenMP pools would otherwise use every core beside
    # torch's; on a shared machine their spinning threads made a 120-point t-SNE take
    # 60 s instead of 3. The thread count torch was given is the user's intent.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(torch.get_num_threads()):
        if method == "umap":
            import umap

            mapper = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), min_dist=0.1, random_state=seed)
            return torch.from_numpy(mapper.fit_transform(reduced)).float()
        from sklearn.manifold import TSNE

        tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed)
        return torch.from_numpy(tsne.fit_transform(reduced)).float()


def neighbour_agreement(xy_N2: torch.Tensor, labels_N: torch.Tensor, k: int = NEIGHBOURS) -> float | None:
    """Mean share of each point's ``k`` nearest map neighbours that share its label."""
    if (labels_N == UNLABELED).all() or len(labels_N) <= k:
        return None
    dist = torch.cdist(xy_N2.double(), xy_N2.double())
    dist.fill_diagonal_(float("inf"))
    nearest = dist.topk(k, largest=False).indices
    return float((labels_N[nearest] == labels_N[:, None]).float().mean())


def embed(encoder: Encoder, spec: str, *, size: int, channels: int, mean, std, out_dir: str | Path,
          method: str = "auto", stage: str | None = None, max_samples: int = 2000, batch_size: int = 256,
          workers: int = 2, seed: int = 0, title: str | None = None, classes=()) -> dict:
    """Map ``spec``'s features to 2-D and write the picture, the coordinates and ``embed.json``.

    ``title`` starts the picture's heading; ``classes`` names the labels in the legend.

    Returns the ``embed.json`` record (with ``paths``).
    """
    started = time.perf_counter()
    method = pick_method(method)
    names = encoder.stage_names
    if stage is not None and stage not in names:
        raise ConfigError(f"--stage {stage!r} is not a stage of this encoder; its stages are {', '.join(names)}")
    if max_samples < 3:
        raise ConfigError("--max-samples must be at least 3")
    index = names.index(stage) if stage is not None else len(names) - 1
    keys: list[str] = []

    def batches():
        for img, cls, k in read_batches(spec, size=size, channels=channels, max_samples=max_samples,
                                        batch_size=batch_size, workers=workers, seed=seed):
            keys.extend(k)
            yield img, cls

    feats = extract_features(encoder, batches(), mean=mean, std=std, max_dims=None)
    if len(feats) < 3:
        raise DataError(f"{spec!r} gave {len(feats)} sample(s); a map needs at least 3")
    t_feats = time.perf_counter() - started
    xy = to_2d(feats.stages[index].feats_ND, method, seed)
    labels = feats.labels_N
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"png": out_dir / "embedding.png", "csv": out_dir / "embedding.csv", "json": out_dir / "embed.json"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "label", "x", "y"])
        writer.writerows([k, int(c), f"{float(p[0]):.6g}", f"{float(p[1]):.6g}"] for k, c, p in zip(keys, labels, xy))
    record = {
        "format": FORMAT,
        "method": method,
        "method_settings": {"umap": "n_neighbors 15, min_dist 0.1", "tsne": "perplexity 30, PCA init",
                            "pca": "first two principal components"}[method]
                           + (f", after standardising and PCA to <= {PCA_DIMS} dims" if method != "pca" else
                              ", of the standardised features"),
        "stage": names[index],
        "feature_dims": feats.stages[index].dims,
        "count": len(feats),
        "labeled": bool((labels != UNLABELED).any()),
        "classes": list(classes),
        "neighbour_label_agreement": neighbour_agreement(xy, labels),
        "data": str(spec),
        "seed": seed,
        "seconds": {"features": round(t_feats, 3), "total": round(time.perf_counter() - started, 3)},
    }
    heading = f"{title + ', ' if title else ''}{names[index]}: {method.upper()} of {len(feats)} samples"
    draw_map(xy, labels, paths["png"], title=heading, classes=classes)
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    record["paths"] = {k: str(v) for k, v in paths.items()}
    return record


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable in Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def draw_map(xy_N2: torch.Tensor, labels_N: torch.Tensor, path: Path, *, title: str, classes=(),
             side: int = 640) -> Path:
    """A scatter plot of ``xy`` coloured by label, with a legend, as a PNG."""
    margin, legend_w, top = 20, 170, 40
    img = Image.new("RGB", (side + legend_w, side + top), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(12)
    draw.text((margin, 12), title, fill="black", font=font)
    lo, hi = xy_N2.min(0).values, xy_N2.max(0).values
    span = (hi - lo).clamp_min(1e-12)
    inner = side - 2 * margin
    pixels = (xy_N2 - lo) / span * inner + margin
    radius = 3 if len(xy_N2) <= 3000 else 2
    order = torch.randperm(len(xy_N2), generator=torch.Generator().manual_seed(0))  # no class drawn on top
    for i in order.tolist():
        x, y = float(pixels[i, 0]), top + side - float(pixels[i, 1])  # y grows upwards
        label = int(labels_N[i])
        color = (60, 60, 60) if label == UNLABELED else PALETTE[label % len(PALETTE)]
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
    present = sorted({int(c) for c in labels_N.tolist()} - {UNLABELED})
    for row, label in enumerate(present[:40]):
        y = top + margin + 18 * row
        draw.rectangle([side + 6, y, side + 18, y + 12], fill=PALETTE[label % len(PALETTE)])
        name = classes[label] if label < len(classes) else str(label)
        draw.text((side + 24, y - 1), f"{label} {name}"[:22], fill="black", font=small)
    img.save(path)
    return path
