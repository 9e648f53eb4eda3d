"""Class-balanced label subsets (1%, 10% of the labels), chosen reproducibly from a seed.

Semi-supervised results are quoted at 1% and 10% of the labels (SimCLRv2, Chen et al.
2020, "Big Self-Supervised Models are Strong Semi-Supervised Learners": ResNet-50 1x
57.9 / 68.4 top-1 on ImageNet), with about the same number of images per class. Here:

- every class gets ``k = max(1, round(fraction * N / classes))`` samples (all of its
  samples when it has fewer);
- within a class the keys are sorted, shuffled by ``random.Random`` seeded from
  (seed, class), and the first ``k`` are taken: the choice depends only on the seed
  and the set of keys (not on shard order), and with one seed a smaller fraction's
  subset lies inside a larger one's.

The subset is saved in the run directory as ``labels/labels.json`` (the keys, per-class
counts, fraction, seed) and as shards holding copies of the chosen samples' original
bytes (``labels/shard-*.tar`` + ``manifest.json``), so fine-tuning reads it through the
normal shard reader (rank/worker splitting, shuffling, exact resume) and
``convssl probe --train RUN/labels`` can reuse it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from convssl.data.manifest import Manifest, ShardInfo
from convssl.data.tar_stream import iter_shard
from convssl.data.urls import resolve_shards
from convssl.errors import DataError

FORMAT = "convssl-labels/1"
SHARD_PATTERN = "shard-{index:06d}.tar"
MAX_PER_SHARD = 1000


@dataclass(frozen=True)
class LabelIndex:
    """Every sample's key and class in a labeled shard set, in reading order."""

    spec: str
    keys: tuple[str, ...]
    labels: tuple[int, ...]
    corrupt: int

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


def index_labels(spec: str) -> LabelIndex:
    """Read the keys and classes of ``spec`` (tar headers and ``.cls`` members only: no
    image is decoded). Samples without a valid class are counted as corrupt."""
    urls, manifest = resolve_shards(spec)
    if manifest is not None and not manifest.labeled:
        raise DataError(f"{spec!r} holds unlabeled shards; fine-tuning needs labeled ones (convssl shards --labeled)")
    keys, labels, corrupt = [], [], 0
    for url in urls:
        for key, members in iter_shard(url):
            try:
                labels.append(int(members["cls"].decode("ascii").strip()))
            except (KeyError, UnicodeDecodeError, ValueError):
                corrupt += 1
                continue
            keys.append(key)
    if not keys:
        raise DataError(f"no labeled samples in {spec!r}; build labeled shards with `convssl shards --labeled`")
    if len(set(keys)) != len(keys):
        raise DataError(f"{spec!r} holds duplicate sample keys; a label subset is a list of keys, so they must be "
                        "unique: rebuild the shards with `convssl shards`")
    if min(labels) < 0:
        raise DataError(f"{spec!r} holds a negative class index ({min(labels)})")
    return LabelIndex(str(spec), tuple(keys), tuple(labels), corrupt)


def choose_subset(keys, labels, fraction: float, seed: int) -> list[str]:
    """The keys of a class-balanced subset holding about ``fraction`` of the samples.

    Returned in the order of ``keys``. ``fraction`` 1 returns every key.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(keys)
    by_class: dict[int, list[str]] = defaultdict(list)
    for key, cls in zip(keys, labels):
        by_class[cls].append(key)
    per_class = max(1, round(fraction * len(keys) / len(by_class)))
    chosen: set[str] = set()
    for cls, members in by_class.items():
        order = sorted(members)
        random.Random(f"convssl-labels/{seed}/{cls}").shuffle(order)
        chosen.update(order[:per_class])
    return [key for key in keys if key in chosen]


def write_subset(index: LabelIndex, chosen: list[str], out_dir: str | Path, *, fraction: float, seed: int,
                 copy_samples: bool = True) -> dict:
    """Write ``labels.json`` and (with ``copy_samples``) shards of the chosen samples'
    original bytes into ``out_dir``; without, the run reads the source shards.

    Written into a temporary folder and renamed into place, so an interrupted run never
    leaves a half-written subset. Returns the ``labels.json`` record.
    """
    import webdataset as wds

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DataError(f"{out_dir} already exists; remove it or choose another run directory")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    urls, manifest = resolve_shards(index.spec)
    wanted, shards, writer, count, path = set(chosen), [], None, 0, None
    label_of = dict(zip(index.keys, index.labels))
    try:
        for url in urls if copy_samples else ():
            for key, members in iter_shard(url):
                if key not in wanted:
                    continue
                if writer is None or count == MAX_PER_SHARD:
                    if writer is not None:
                        writer.close()
                        shards.append(ShardInfo(path.name, count, path.stat().st_size))
                    path = tmp / SHARD_PATTERN.format(index=len(shards))
                    writer, count = wds.TarWriter(str(path), encoder=False), 0
                writer.write({"__key__": key, **members})
                count += 1
        if writer is not None:
            writer.close()
            shards.append(ShardInfo(path.name, count, path.stat().st_size))
        counts = defaultdict(int)
        for key in chosen:
            counts[label_of[key]] += 1
        record = {
            "format": FORMAT,
            "source": index.spec,
            "fraction": fraction,
            "seed": seed,
            "count": len(chosen),
            "of": len(index.keys),
            "num_classes": index.num_classes,
            "classes": list(manifest.classes) if manifest else [],
            "copied": copy_samples,  # True: the samples are shards beside this file; False: read from source
            "per_class": {str(c): counts[c] for c in sorted(counts)},
            "rule": "per class max(1, round(fraction * N / classes)) keys, sorted then shuffled by "
                    "random.Random('convssl-labels/{seed}/{class}'), the first taken",
            "keys": list(chosen),
        }
        (tmp / "labels.json").write_text(json.dumps(record, indent=1) + "\n")
        if copy_samples:
            Manifest(shards=tuple(shards), labeled=True, classes=manifest.classes if manifest else (),
                     modes=manifest.modes if manifest else (), channels=manifest.channels if manifest else None,
                     source=f"label subset ({fraction:g}, seed {seed}) of {index.spec}").write(tmp)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def read_subset(out_dir: str | Path) -> dict:
    """The ``labels.json`` record of a subset written by ``write_subset``."""
    path = Path(out_dir) / "labels.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the label subset {path} ({exc}); remove the run directory and start again") from exc
    if record.get("format") != FORMAT:
        raise DataError(f"{path} is not a convssl label subset")
    return record
