"""Which pieces of which shards each reading unit reads in an epoch.

Units. Every (rank, DataLoader worker) pair is one *unit*: ``units = world_size *
num_workers`` and ``unit = rank * num_workers + worker_id``. Each epoch the shards are
put in an order (shuffled per (seed, epoch) when shuffling) and dealt to the units:

- when the manifest gives every shard's sample count (the usual case), the epoch's
  samples, shard after shard, are cut into ``units`` contiguous ranges that differ by at
  most one sample, and each unit reads only the shards its range touches (and stops
  reading a shard where its range ends). Units stay balanced however many shards there
  are, also fewer shards than units;
- without counts, whole shards go round-robin when there are at least as many as units;
  with fewer, each shard is split into ``ceil(units / shards)`` interleaved parts (every
  k-th sample) and the parts go round-robin, so each unit reads one or two shards
  instead of all of them.

Either way a finite pass yields every sample exactly once over all units.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import NamedTuple

from convssl.data.manifest import Manifest


class Piece(NamedTuple):
    """Samples ``range(start, stop, step)`` of one shard (stop None: to its end)."""

    url: str
    start: int
    stop: int | None
    step: int


def shard_counts(urls: list[str], manifest: Manifest | None) -> dict[str, int]:
    """Sample count per URL from the manifest: by position when the manifest lists exactly
    these shards (as ``resolve_shards`` returns them), else by file name."""
    if manifest is None:
        return {}
    if len(urls) == len(manifest.shards) and all(s.name in url for url, s in zip(urls, manifest.shards)):
        return {url: s.count for url, s in zip(urls, manifest.shards)}
    by_name = {s.name: s.count for s in manifest.shards}
    return {url: by_name[Path(url).name] for url in urls if Path(url).name in by_name}


def shard_order(urls: list[str], *, shuffle: bool, seed: int, epoch: int) -> list[str]:
    """The shards in the order ``epoch`` reads them: as given, or shuffled per (seed, epoch)."""
    order = list(urls)
    if shuffle:
        random.Random(f"convssl-shards/{seed}/{epoch}").shuffle(order)
    return order


def deal(order: list[str], counts: dict[str, int], unit: int, units: int) -> tuple[list[Piece], int | None]:
    """The pieces of the shards in ``order`` that unit ``unit`` of ``units`` reads, and
    their sample count when ``counts`` knows every shard's."""
    if all(url in counts for url in order):
        total = sum(counts[url] for url in order)
        lo, hi = unit * total // units, (unit + 1) * total // units
        pieces, offset = [], 0
        for url in order:
            count = counts[url]
            if offset < hi and lo < offset + count:
                pieces.append(Piece(url, max(lo - offset, 0), min(hi - offset, count), 1))
            offset += count
        return pieces, hi - lo
    if len(order) >= units:
        return [Piece(url, 0, None, 1) for url in order[unit::units]], None
    parts = math.ceil(units / len(order))
    return [Piece(order[j // parts], j % parts, None, parts) for j in range(unit, len(order) * parts, units)], None
