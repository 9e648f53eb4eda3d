"""Read webdataset shards as a torch ``IterableDataset`` split over ranks and workers.

Every (rank, DataLoader worker) pair is one *unit*: ``units = world_size * num_workers``
and ``unit = rank * num_workers + worker_id``. With at least as many shards as units,
the shards (in an order shuffled per (seed, epoch) when shuffling) are dealt to the
units round-robin; with fewer, every unit reads every shard and keeps the samples whose
running index is ``unit`` modulo ``units``. Either way a finite pass yields every
sample exactly once over all units.

Per unit the pipeline is: raw samples (bytes) -> shuffle buffer -> resume skip ->
decode -> transform. Shuffling and skipping work on undecoded bytes, so skipping is
cheap and the shuffle buffer holds compressed images. All randomness is a function of
(seed, epoch, unit) and the sample's position in the unit's stream, never of timing:
the transform gets a ``torch.Generator`` seeded from (seed, epoch, unit, position),
so a resumed run sees exactly the samples and crops of an uninterrupted one.

Legend: C channels, H height, W width, B batch.
"""

from __future__ import annotations

import signal

import hashlib
import io
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from convssl.data.manifest import Manifest
from convssl.data.tar_stream import iter_tar_samples
from convssl.data.urls import resolve_shards
from convssl.errors import DataError

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pnm")
_MIN_SEEN_FOR_CORRUPT_CHECK = 50

Transform = Callable[[torch.Tensor, torch.Generator], dict]


def identity(img_CHW: torch.Tensor, generator: torch.Generator) -> dict:
    """The default sample transform: the decoded uint8 image, unchanged, as ``img``."""
    return {"img": img_CHW}


@dataclass
class ReadStats:
    """Samples decoded (``seen``) and skipped as corrupt by this process's copy of a dataset."""

    seen: int = 0
    corrupt: int = 0


@dataclass(frozen=True)
class _RawSample:
    shard: str
    key: str
    members: dict[str, bytes]


class _CorruptSample(Exception):
    """A sample that cannot be turned into an image (and class); internal to the reader."""


class ShardDataset(IterableDataset):
    """Decoded samples from webdataset shards: the transform's entries (``{"img"}`` by
    default), ``"cls"`` (if labeled) and ``"key"``.

    Args:
        urls: shard paths, or a spec for ``resolve_shards`` (folder, manifest, brace pattern).
        transform: a sample transform ``(img_uint8_CHW, generator) -> dict`` whose entries
            join the sample (``convssl.data.views``); default ``{"img": img}``.
        channels: 1 converts to grayscale ("L"), 3 to "RGB"; None keeps "L" and "RGB"
            images as they are and converts other modes to "RGB".
        labeled: also yield ``"cls"`` (an int); a sample without a valid class is corrupt.
        shuffle_buffer: samples held for shuffling; 0 reads in shard order, unshuffled.
        seed, epoch: all randomness derives from them; ``set_epoch`` moves to another epoch
            (also in persistent DataLoader workers: the epoch lives in shared memory).
        rank, world_size: this process's place among distributed ranks.
        infinite: loop over epochs forever (epoch, epoch + 1, ...), reshuffling each.
        start_batches, batch_size: resume after ``start_batches`` batches of ``batch_size``
            drawn by a DataLoader (workers take turns, one whole batch each) from epoch
            ``epoch``; in infinite mode ``start_batches`` may span several epochs. The
            resumed loader yields the batches the uninterrupted one would have, in order
            (exactly so in infinite mode; in finite mode until a worker runs out).
        max_corrupt_fraction: raise ``DataError`` when corrupt / seen exceeds it (checked
            from 50 samples on, and at the end of each pass).
        manifest: the shards' manifest (taken from ``urls`` when that is a spec); its
            sample counts let resumption skip whole epochs and detect truncated shards.
    """

    def __init__(
        self,
        urls: Sequence[str] | str | Path,
        *,
        transform: Transform = identity,
        channels: int | None = None,
        labeled: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        infinite: bool = False,
        start_batches: int = 0,
        batch_size: int | None = None,
        max_corrupt_fraction: float = 0.01,
        manifest: Manifest | None = None,
    ):
        super().__init__()
        if isinstance(urls, (str, Path)):
            urls, found_manifest = resolve_shards(urls)
            manifest = manifest or found_manifest
        if not urls:
            raise DataError("no shards given; pass shard paths or a shard folder")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, not {channels!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if start_batches and not batch_size:
            raise ValueError("start_batches needs the batch_size the batches were drawn with")
        if labeled and manifest is not None and not manifest.labeled:
            raise DataError("labeled=True but the shards' manifest says they hold no labels; build labeled shards")
        self.urls = [str(url) for url in urls]
        self.transform = transform
        self.channels = channels
        self.labeled = labeled
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.infinite = infinite
        self.start_batches, self.batch_size = start_batches, batch_size
        self.start_epoch = epoch
        self.max_corrupt_fraction = max_corrupt_fraction
        self.manifest = manifest
        self.stats = ReadStats()
        self._shard_counts = {Path(s.name).name: s.count for s in manifest.shards} if manifest else {}
        self._epoch_shared = torch.tensor([epoch], dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch the next pass reads."""
        return int(self._epoch_shared[0])

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` on the next pass (seen by persistent workers too)."""
        self._epoch_shared[0] = epoch

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        num_workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        epoch = self.epoch
        role, to_skip = worker_id, 0
        if epoch == self.start_epoch and self.start_batches:
            # The loader asks workers 0, 1, ... in turn; batch ``start_batches`` of the
            # interrupted run came from worker start_batches % W, so worker w takes over
            # that worker's stream ("role") and the batches keep their order.
            role = (worker_id + self.start_batches) % num_workers
            to_skip = len(range(role, self.start_batches, num_workers)) * self.batch_size
        units = self.world_size * num_workers
        unit = self.rank * num_workers + role
        while True:
            epoch_count = self._unit_epoch_count(epoch, unit, units)
            if self.infinite and to_skip and epoch_count and to_skip >= epoch_count:
                to_skip -= epoch_count  # the whole epoch was consumed before: skip it unread
            else:
                raw_seen = 0
                for position, raw in enumerate(self._shuffled(self._unit_samples(epoch, unit, units), epoch, unit)):
                    raw_seen += 1
                    if to_skip:
                        to_skip -= 1
                        continue
                    if (sample := self._decode_and_transform(raw, epoch, unit, position)) is not None:
                        yield sample
                self._check_corrupt_fraction(end_of_pass=True)
                if self.infinite and raw_seen == 0:
                    raise DataError(
                        f"unit {unit} of {units} (rank {self.rank}, worker {worker_id}) got no samples from "
                        f"{len(self.urls)} shard(s); use fewer workers or ranks, or more data"
                    )
            if not self.infinite:
                return
            epoch += 1

    # -- splitting --------------------------------------------------------------------

    def _shard_order(self, epoch: int) -> list[str]:
        if self.shuffle_buffer <= 0:
            return list(self.urls)
        order = list(self.urls)
        random.Random(f"convssl-shards/{self.seed}/{epoch}").shuffle(order)
        return order

    def _unit_epoch_count(self, epoch: int, unit: int, units: int) -> int | None:
        """Samples unit ``unit`` reads in ``epoch``, when the manifest tells."""
        if not self._shard_counts:
            return None
        order = self._shard_order(epoch)
        if len(order) >= units:
            counts = [self._shard_counts.get(Path(url).name) for url in order[unit::units]]
            return None if None in counts else sum(counts)
        total = sum(self._shard_counts.get(Path(url).name, 0) for url in order)
        return len(range(unit, total, units))

    def _unit_samples(self, epoch: int, unit: int, units: int) -> Iterator[_RawSample]:
        order = self._shard_order(epoch)
        if len(order) >= units:
            for url in order[unit::units]:
                yield from self._shard_samples(url)
        else:
            for index, raw in enumerate(s for url in order for s in self._shard_samples(url)):
                if index % units == unit:
                    yield raw

    def _shard_samples(self, url: str) -> Iterator[_RawSample]:
        count = 0
        for key, members in iter_tar_samples(url):
            count += 1
            yield _RawSample(url, key, members)
        expected = self._shard_counts.get(Path(url).name)
        if expected is not None and count != expected:
            raise DataError(f"shard {url} holds {count} samples, its manifest says {expected}; "
                            "it is truncated or stale: rebuild it with `convssl shards`")

    def _shuffled(self, raws: Iterator[_RawSample], epoch: int, unit: int) -> Iterator[_RawSample]:
        """A shuffle buffer: yields a random held sample for each new one once full."""
        if self.shuffle_buffer <= 0:
            yield from raws
            return
        rng = random.Random(f"convssl-buffer/{self.seed}/{epoch}/{unit}")
        buffer: list[_RawSample] = []
        for raw in raws:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(raw)
                continue
            index = rng.randrange(len(buffer))
            buffer[index], raw = raw, buffer[index]
            yield raw
        rng.shuffle(buffer)
        yield from buffer

    # -- decoding ---------------------------------------------------------------------

    def _decode_and_transform(self, raw: _RawSample, epoch: int, unit: int, position: int) -> dict | None:
        self.stats.seen += 1
        try:
            img_CHW, cls = self._decode(raw)
        except _CorruptSample as err:
            self.stats.corrupt += 1
            warnings.warn(f"skipping corrupt sample {raw.key!r} in shard {raw.shard}: {err}", stacklevel=2)
            self._check_corrupt_fraction(end_of_pass=False)
            return None
        generator = torch.Generator().manual_seed(_derive_seed(self.seed, epoch, unit, position))
        sample = {**self.transform(img_CHW, generator), "key": raw.key}
        if self.labeled:
            sample["cls"] = cls
        return sample

    def _decode(self, raw: _RawSample) -> tuple[torch.Tensor, int | None]:
        ext = next((ext for ext in IMAGE_EXTENSIONS if ext in raw.members), None)
        if ext is None:
            raise _CorruptSample(f"no image member (has: {', '.join(raw.members) or 'nothing'})")
        cls = None
        if self.labeled:
            try:
                cls = int(raw.members["cls"].decode("ascii").strip())
            except (KeyError, UnicodeDecodeError, ValueError):
                raise _CorruptSample("missing or non-integer class (.cls)") from None
        try:
            with Image.open(io.BytesIO(raw.members[ext])) as img:
                img = img.convert(self._target_mode(img.mode))
                pixels_HWC = np.array(img).reshape(img.height, img.width, -1)
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
            raise _CorruptSample(f"undecodable .{ext} image ({err})") from None
        return torch.from_numpy(pixels_HWC).permute(2, 0, 1), cls

    def _target_mode(self, mode: str) -> str:
        if self.channels == 1:
            return "L"
        if self.channels == 3:
            return "RGB"
        return mode if mode in ("L", "RGB") else "RGB"

    def _check_corrupt_fraction(self, *, end_of_pass: bool) -> None:
        seen, corrupt = self.stats.seen, self.stats.corrupt
        if not corrupt or (not end_of_pass and seen < _MIN_SEEN_FOR_CORRUPT_CHECK):
            return
        if corrupt / seen > self.max_corrupt_fraction:
            raise DataError(
                f"{corrupt} of {seen} samples read were corrupt ({corrupt / seen:.1%}), more than "
                f"max_corrupt_fraction={self.max_corrupt_fraction}; rebuild the shards or raise the limit"
            )


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (no arithmetic collisions)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def collate_samples(samples: list[dict]) -> dict:
    """Batch sample dicts: tensors stack to (B, ...), lists of tensors (views) stack per
    view, ints become an int64 tensor (B,), strings a list."""
    batch = {}
    for name, first in samples[0].items():
        values = [sample[name] for sample in samples]
        if isinstance(first, torch.Tensor):
            batch[name] = _stack(values, name)
        elif isinstance(first, (list, tuple)):
            batch[name] = [_stack(list(views), name) for views in zip(*values)]
        elif isinstance(first, int):
            batch[name] = torch.tensor(values, dtype=torch.int64)
        else:
            batch[name] = values
    return batch


def _stack(tensors: list[torch.Tensor], name: str) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise DataError(
            f"cannot batch {name!r}: samples have shapes {sorted(shapes)[:4]}; give the dataset a crop "
            "transform (e.g. convssl.data.views.crop_views) and channels=1 or 3"
        )
    return torch.stack(tensors)


def _leave_signals_to_main(_worker_id: int) -> None:
    """Workers ignore SIGINT/SIGTERM sent to the whole process group (Ctrl-C, timeout,
    a cluster scheduler): the main process then saves a checkpoint and shuts them down.
    A worker whose parent dies still exits (DataLoader's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(
    dataset: ShardDataset,
    batch_size: int,
    num_workers: int,
    *,
    pin_memory: bool | None = None,
    prefetch_factor: int | None = 4,
    persistent_workers: bool | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` that batches with ``collate_samples``.

    Defaults: persistent workers when ``num_workers > 0``, pinned memory only when CUDA
    is available. In infinite mode every batch is full, so ``drop_last`` only matters
    for the last batch of each worker in finite mode.
    """
    if dataset.start_batches and dataset.batch_size != batch_size:
        raise ValueError(f"the dataset resumes batches of {dataset.batch_size}, the loader makes {batch_size}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        worker_init_fn=_leave_signals_to_main,
        collate_fn=collate_samples,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0 if persistent_workers is None else persistent_workers,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        drop_last=drop_last,
    )
