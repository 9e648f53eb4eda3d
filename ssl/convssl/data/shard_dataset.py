"""Read webdataset shards (local, ``pipe:``, http(s), ...) as a torch ``IterableDataset``.

Per unit (a (rank, DataLoader worker) pair, ``convssl.data.unit_split``) the pipeline
is: the unit's pieces of shards, read with retries (``retrying_reader``) -> raw samples
(bytes) -> shuffle buffer -> resume skip -> decode (``sample_decode``; corrupt samples
replaced in place, ``corrupt_samples``) -> transform. Shuffling and skipping work on
undecoded bytes, so skipping is cheap and the shuffle buffer holds compressed images.
All randomness is a function of (seed, epoch, unit) and the sample's position in the
unit's stream, never of timing: the transform gets a ``torch.Generator`` seeded from
(seed, epoch, unit, position).

Statistics. Each worker writes its counters into a row of a shared-memory table
(``read_stats``), so ``dataset.stats`` in the main process sums every worker's.
Batching: ``convssl.data.collate``; the DataLoader: ``convssl.data.loader``.

Legend: C channels, H height, W width.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from convssl.data.corrupt_samples import check_corrupt_fraction, positioned_samples
from convssl.data.manifest import Manifest
from convssl.data.read_error import ShardReadError
from convssl.data.read_stats import MAX_WORKERS, ReadStats, UnitCounters, new_stats_table, sum_stats
from convssl.data.retrying_reader import RetryingReader
from convssl.data.sample_decode import Decoded, RawSample, decode_sample
from convssl.data.unit_split import deal, shard_counts, shard_order
from convssl.data.urls import resolve_shards
from convssl.errors import DataError

Transform = Callable[[torch.Tensor, torch.Generator], "dict[str, torch.Tensor | list[torch.Tensor]]"]


def identity(img_CHW: torch.Tensor, generator: torch.Generator) -> dict:
    """The default sample transform: the decoded uint8 image, unchanged, as ``img``."""
    return {"img": img_CHW}


class _Counted:
    """An iterator that counts what it passed on (``count``)."""

    def __init__(self, items: Iterator):
        self.items, self.count = items, 0

    def __iter__(self):
        for item in self.items:
            self.count += 1
            yield item


class ShardDataset(IterableDataset):
    """Decoded samples from webdataset shards: the transform's entries (``{"img"}`` by
    default), ``"cls"`` (if labeled) and ``"key"``.

    Args:
        urls: shard URLs, or a spec for ``resolve_shards`` (folder, manifest, brace
            pattern, remote manifest; ``::`` joins).
        transform: a sample transform ``(img_uint8_CHW, generator) -> dict`` whose entries
            join the sample (``convssl.views.crop_views``); default ``{"img": img}``.
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
            sample counts balance the units and let resumption skip whole epochs unread.
        retries, retry_delay: re-open a failing remote shard (not a local file) up to
            ``retries`` times, waiting ``retry_delay * 2**attempt`` seconds before each.
        timeout: seconds an http(s) connection may stay silent.
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
        retries: int = 3,
        retry_delay: float = 1.0,
        timeout: float = 60.0,
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
        if retries < 0 or retry_delay < 0:
            raise ValueError("retries and retry_delay must not be negative")
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
        self.retries, self.retry_delay, self.timeout = retries, retry_delay, timeout
        self._counts = shard_counts(self.urls, manifest)
        self._epoch_shared = torch.tensor([epoch], dtype=torch.int64).share_memory_()
        self._stats_shared = new_stats_table()

    @property
    def epoch(self) -> int:
        """The epoch the next pass reads."""
        return int(self._epoch_shared[0])

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` on the next pass (seen by persistent workers too)."""
        self._epoch_shared[0] = epoch

    @property
    def stats(self) -> ReadStats:
        """Counters summed over this process and all DataLoader workers (which flush theirs
        every 64 samples, on every corrupt sample or failed shard, and at the end of a pass)."""
        return sum_stats(self._stats_shared)

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        num_workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        if worker_id >= MAX_WORKERS:
            raise ShardReadError(f"at most {MAX_WORKERS} loader workers per process are supported")
        counters = UnitCounters(self._stats_shared, worker_id)
        reader = RetryingReader(self.retries, self.retry_delay, self.timeout, self.max_corrupt_fraction)
        decode = functools.partial(decode_sample, channels=self.channels, labeled=self.labeled)
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
        try:
            while True:
                order = shard_order(self.urls, shuffle=self.shuffle_buffer > 0, seed=self.seed, epoch=epoch)
                pieces, epoch_count = deal(order, self._counts, unit, units)
                if self.infinite and to_skip and epoch_count is not None and to_skip >= epoch_count:
                    to_skip -= epoch_count  # the whole epoch was consumed before: skip it unread
                else:
                    raws = _Counted(self._shuffled(reader.read(pieces, counters), epoch, unit))
                    make_sample = functools.partial(self._sample, epoch=epoch, unit=unit)
                    yield from positioned_samples(raws, to_skip, decode, make_sample, counters,
                                                  self.max_corrupt_fraction)
                    to_skip = max(0, to_skip - raws.count)  # without counts, a skip may span epochs
                    counters.flush()
                    check_corrupt_fraction(counters, self.max_corrupt_fraction, end_of_pass=True)
                    if self.infinite and raws.count == 0:
                        raise ShardReadError(
                            f"unit {unit} of {units} (rank {self.rank}, worker {worker_id}) got no samples from "
                            f"{len(self.urls)} shard(s); use fewer workers or ranks, or more data"
                        )
                if not self.infinite:
                    return
                epoch += 1
        finally:
            counters.flush()

    # -- the unit's stream ---------------------------------------------------------

    def _shuffled(self, raws: Iterator[RawSample], epoch: int, unit: int) -> Iterator[RawSample]:
        """A shuffle buffer: yields a random held sample for each new one once full."""
        if self.shuffle_buffer <= 0:
            yield from raws
            return
        rng = random.Random(f"convssl-buffer/{self.seed}/{epoch}/{unit}")
        buffer: list[RawSample] = []
        for raw in raws:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(raw)
                continue
            index = rng.randrange(len(buffer))
            buffer[index], raw = raw, buffer[index]
            yield raw
        rng.shuffle(buffer)
        yield from buffer

    def _sample(self, decoded: Decoded, position: int, *, epoch: int, unit: int) -> dict:
        """The transform's entries for ``decoded`` at ``position`` of the unit's stream, with its key (and class)."""
        generator = torch.Generator().manual_seed(_derive_seed(self.seed, epoch, unit, position))
        out = self.transform(decoded.img_CHW, generator)
        if not isinstance(out, dict):
            raise TypeError(f"the reader's transform must return a dict such as {{'img': ...}}, not "
                            f"{type(out).__name__}; wrap it: convssl.views.crop_views.Named(transform)")
        sample = {**out, "key": decoded.raw.key}
        if self.labeled:
            sample["cls"] = decoded.cls
        return sample


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (no arithmetic collisions)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
