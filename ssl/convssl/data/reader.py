"""Read webdataset shards (local, ``pipe:``, http(s), ...) as a torch ``IterableDataset``.

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

Per unit the pipeline is: raw samples (bytes) -> shuffle buffer -> resume skip ->
decode -> transform. Shuffling and skipping work on undecoded bytes, so skipping is
cheap and the shuffle buffer holds compressed images. All randomness is a function of
(seed, epoch, unit) and the sample's position in the unit's stream, never of timing:
the transform gets a ``torch.Generator`` seeded from (seed, epoch, unit, position).

Corrupt samples keep their position. An undecodable sample at position p is counted
and replaced by the nearest decodable raw sample before it (at most ``_LOOK_BACK``
back, in the same pass), else by the next decodable one, transformed with position p's
generator. So the positions of the yielded stream are the raw stream's, and a resumed
run (which skips raw samples by count) yields exactly the samples and crops of an
uninterrupted one, corrupt samples before the resume point or not.

Remote shards. A shard that fails to open or breaks off mid-read is re-opened up to
``retries`` times, ``retry_delay * 2**attempt`` seconds apart, continuing after the
samples already read. A shard still failing after that (a vanished shard) is skipped:
its unread samples count as corrupt ones, under the same ``max_corrupt_fraction``; the
error raised past that threshold names the shard and its last failure.

Statistics. Each worker writes its counters (``ReadStats``) into a row of a
shared-memory table, so ``dataset.stats`` in the main process sums every worker's.

Legend: C channels, H height, W width, B batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import random
import signal
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from convssl.data.manifest import Manifest
from convssl.data.tar_stream import SHARD_ERRORS, describe_failure, is_local, iter_shard
from convssl.data.urls import resolve_shards
from convssl.errors import DataError

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pnm")
_MIN_SEEN_FOR_CORRUPT_CHECK = 50
_LOOK_BACK = 8  # raw samples kept to stand in for a corrupt one
_MAX_WORKERS = 256  # rows of the shared statistics table
_FLUSH_EVERY = 64  # samples between two writes of a worker's counters to shared memory

Transform = Callable[[torch.Tensor, torch.Generator], "dict[str, torch.Tensor | list[torch.Tensor]]"]


def identity(img_CHW: torch.Tensor, generator: torch.Generator) -> dict:
    """The default sample transform: the decoded uint8 image, unchanged, as ``img``."""
    return {"img": img_CHW}


@dataclass
class ReadStats:
    """What the reader did, summed over the main process and every worker.

    read: raw samples taken from shard streams (also those passed over to reach a unit's
        range, skipped on resume, or re-read after a retry).
    seen: samples decoded, corrupt ones included, plus the unread samples of failed shards.
    corrupt: samples that could not be decoded, plus the unread samples of failed shards
        (known from the manifest; 1 per failed shard without one).
    failed_shards: shards given up on after their retries.
    retries: shard re-opens after a failure.
    read_s, decode_s: seconds spent reading shards (I/O and tar parsing), and decoding +
        transforming samples.
    """

    read: int = 0
    seen: int = 0
    corrupt: int = 0
    failed_shards: int = 0
    retries: int = 0
    read_s: float = 0.0
    decode_s: float = 0.0


_STAT_NAMES = tuple(f.name for f in fields(ReadStats))


class ShardReadError(DataError):
    """A ``DataError`` raised while reading; keeps its one-line message when a DataLoader
    worker raises it (torch re-raises ``type(message=<worker traceback>)`` in the main
    process; the original message is the traceback's last line)."""

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rstrip().rpartition(marker)[2]
        super().__init__(message)


class _Piece(NamedTuple):
    """Samples ``range(start, stop, step)`` of one shard (stop None: to its end)."""

    url: str
    start: int
    stop: int | None
    step: int


@dataclass(frozen=True)
class _RawSample:
    shard: str
    key: str
    members: dict[str, bytes]


class _CorruptSample(Exception):
    """A sample that cannot be turned into an image (and class); internal to the reader."""


class _Decoded(NamedTuple):
    raw: _RawSample
    img_CHW: torch.Tensor
    cls: int | None


class _Counted:
    """An iterator that counts what it passed on (``count``)."""

    def __init__(self, items: Iterator):
        self.items, self.count = items, 0

    def __iter__(self):
        for item in self.items:
            self.count += 1
            yield item


class _UnitState:
    """One process's counters (its row of the shared table) and its last shard failure."""

    def __init__(self, table: torch.Tensor, row: int):
        self.table, self.row = table, row
        self.values = dict(zip(_STAT_NAMES, table[row].tolist()))
        self.unflushed = 0
        self.last_failure = ""

    def add(self, name: str, amount: float = 1) -> None:
        self.values[name] += amount

    def tick(self) -> None:
        self.unflushed += 1
        if self.unflushed >= _FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        self.table[self.row] = torch.tensor([self.values[n] for n in _STAT_NAMES], dtype=torch.float64)
        self.unflushed = 0


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
        self._counts = _shard_counts(self.urls, manifest)
        self._epoch_shared = torch.tensor([epoch], dtype=torch.int64).share_memory_()
        self._stats_shared = torch.zeros(_MAX_WORKERS, len(_STAT_NAMES), dtype=torch.float64).share_memory_()

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
        totals = self._stats_shared.sum(0).tolist()
        return ReadStats(**{name: (value if name.endswith("_s") else int(value))
                            for name, value in zip(_STAT_NAMES, totals)})

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        num_workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        if worker_id >= _MAX_WORKERS:
            raise ShardReadError(f"at most {_MAX_WORKERS} loader workers per process are supported")
        state = _UnitState(self._stats_shared, worker_id)
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
                pieces, epoch_count = self._deal(epoch, unit, units)
                if self.infinite and to_skip and epoch_count is not None and to_skip >= epoch_count:
                    to_skip -= epoch_count  # the whole epoch was consumed before: skip it unread
                else:
                    raws = _Counted(self._shuffled(self._read_pieces(pieces, state), epoch, unit))
                    yield from self._positioned(raws, epoch, unit, to_skip, state)
                    to_skip = max(0, to_skip - raws.count)  # without counts, a skip may span epochs
                    state.flush()
                    self._check_corrupt_fraction(state, end_of_pass=True)
                    if self.infinite and raws.count == 0:
                        raise ShardReadError(
                            f"unit {unit} of {units} (rank {self.rank}, worker {worker_id}) got no samples from "
                            f"{len(self.urls)} shard(s); use fewer workers or ranks, or more data"
                        )
                if not self.infinite:
                    return
                epoch += 1
        finally:
            state.flush()

    # -- splitting --------------------------------------------------------------------

    def _shard_order(self, epoch: int) -> list[str]:
        if self.shuffle_buffer <= 0:
            return list(self.urls)
        order = list(self.urls)
        random.Random(f"convssl-shards/{self.seed}/{epoch}").shuffle(order)
        return order

    def _deal(self, epoch: int, unit: int, units: int) -> tuple[list[_Piece], int | None]:
        """The pieces of shards unit ``unit`` reads in ``epoch``, and their sample count if known."""
        order = self._shard_order(epoch)
        if all(url in self._counts for url in order):
            total = sum(self._counts[url] for url in order)
            lo, hi = unit * total // units, (unit + 1) * total // units
            pieces, offset = [], 0
            for url in order:
                count = self._counts[url]
                if offset < hi and lo < offset + count:
                    pieces.append(_Piece(url, max(lo - offset, 0), min(hi - offset, count), 1))
                offset += count
            return pieces, hi - lo
        if len(order) >= units:
            return [_Piece(url, 0, None, 1) for url in order[unit::units]], None
        parts = math.ceil(units / len(order))
        return [_Piece(order[j // parts], j % parts, None, parts) for j in range(unit, len(order) * parts, units)], None

    def _read_pieces(self, pieces: list[_Piece], state: _UnitState) -> Iterator[_RawSample]:
        for piece in pieces:
            yield from self._read_piece(piece, state)

    def _read_piece(self, piece: _Piece, state: _UnitState) -> Iterator[_RawSample]:
        """The piece's samples, re-opening a remote shard after a failure; a shard that
        keeps failing is skipped and its unread samples counted as corrupt."""
        wanted = range(piece.start, piece.stop if piece.stop is not None else 2**62, piece.step)
        retries = self.retries if not is_local(piece.url) else 0  # a local file's errors are not transient
        done = 0  # samples of ``wanted`` delivered so far
        failures = 0
        while True:
            index = -1
            try:
                with contextlib.closing(iter_shard(piece.url, timeout=self.timeout)) as samples:
                    while done < len(wanted):
                        started = time.perf_counter()
                        item = next(samples, None)
                        state.add("read_s", time.perf_counter() - started)
                        if item is None:
                            break
                        index += 1
                        state.add("read")
                        if index == wanted[done]:
                            done += 1
                            yield _RawSample(piece.url, *item)
                break
            except SHARD_ERRORS as err:
                failures += 1
                state.last_failure = f"{piece.url}: {describe_failure(getattr(err, 'cause', err), self.timeout)}"
                if failures > retries:
                    self._give_up(piece, len(wanted) - done if piece.stop is not None else 1, failures, state)
                    return
                state.add("retries")
                delay = self.retry_delay * 2 ** (failures - 1)
                # said at once: a frozen server otherwise means minutes of silence before the error
                warnings.warn(f"shard {state.last_failure}; retry {failures} of {retries} in {delay:g} s", stacklevel=2)
                time.sleep(delay)
        if piece.stop is not None and done < len(wanted):
            missing = len(wanted) - done
            state.last_failure = (f"{piece.url}: it holds {index + 1} samples, its manifest says more "
                                  f"(it is truncated or stale: rebuild it with `convssl shards`)")
            self._count_missing(missing, state, f"shard {piece.url} ended {missing} sample(s) early")

    def _give_up(self, piece: _Piece, missing: int, tries: int, state: _UnitState) -> None:
        state.add("failed_shards")
        self._count_missing(missing, state, f"giving up on shard {piece.url} after {tries} tries "
                                            f"({state.last_failure.partition(': ')[2]})")

    def _count_missing(self, missing: int, state: _UnitState, what: str) -> None:
        state.add("seen", missing)
        state.add("corrupt", missing)
        state.flush()
        warnings.warn(f"{what}; its {missing} unread sample(s) count as corrupt", stacklevel=3)
        self._check_corrupt_fraction(state, end_of_pass=False)

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

    def _positioned(self, raws: Iterator[_RawSample], epoch: int, unit: int, to_skip: int,
                    state: _UnitState) -> Iterator[dict]:
        """One sample per raw position after the first ``to_skip``; a corrupt sample's
        position gets a stand-in (see the module docstring)."""
        history: deque[_RawSample | _Decoded | None] = deque(maxlen=_LOOK_BACK)  # None: known corrupt
        waiting: list[int] = []  # corrupt positions with no stand-in behind them yet
        for position, raw in enumerate(raws):
            if position < to_skip:
                history.append(raw)
                continue
            started = time.perf_counter()
            decoded = self._decode_counted(raw, state)
            ready = []
            if decoded is None:
                stand_in = self._stand_in(history)
                if stand_in is None:
                    waiting.append(position)
                else:
                    ready.append(self._sample(stand_in, epoch, unit, position))
            else:
                ready += [self._sample(decoded, epoch, unit, earlier) for earlier in waiting]
                waiting.clear()
                ready.append(self._sample(decoded, epoch, unit, position))
            history.append(decoded)
            state.add("decode_s", time.perf_counter() - started)
            state.tick()
            yield from ready

    def _stand_in(self, history: deque) -> _Decoded | None:
        """The newest decodable sample in ``history`` (decoding skipped ones, uncounted)."""
        for back in range(len(history) - 1, -1, -1):
            entry = history[back]
            if isinstance(entry, _RawSample):
                try:
                    entry = history[back] = _Decoded(entry, *self._decode(entry))
                except _CorruptSample:
                    entry = history[back] = None
            if entry is not None:
                return entry
        return None

    def _decode_counted(self, raw: _RawSample, state: _UnitState) -> _Decoded | None:
        state.add("seen")
        try:
            return _Decoded(raw, *self._decode(raw))
        except _CorruptSample as err:
            state.add("corrupt")
            state.last_failure = f"sample {raw.key!r} in shard {raw.shard}: {err}"
            state.flush()
            warnings.warn(f"skipping corrupt sample {raw.key!r} in shard {raw.shard}: {err}", stacklevel=2)
            self._check_corrupt_fraction(state, end_of_pass=False)
            return None

    def _sample(self, decoded: _Decoded, epoch: int, unit: int, position: int) -> dict:
        generator = torch.Generator().manual_seed(_derive_seed(self.seed, epoch, unit, position))
        out = self.transform(decoded.img_CHW, generator)
        if not isinstance(out, dict):
            raise TypeError(f"the reader's transform must return a dict such as {{'img': ...}}, not "
                            f"{type(out).__name__}; wrap it: convssl.views.crop_views.Named(transform)")
        sample = {**out, "key": decoded.raw.key}
        if self.labeled:
            sample["cls"] = decoded.cls
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
        except Exception as err:  # noqa: BLE001 - PIL's plugins raise many types on bad bytes
            raise _CorruptSample(f"undecodable .{ext} image ({type(err).__name__}: {err})") from None
        return torch.from_numpy(pixels_HWC).permute(2, 0, 1), cls

    def _target_mode(self, mode: str) -> str:
        if self.channels == 1:
            return "L"
        if self.channels == 3:
            return "RGB"
        return mode if mode in ("L", "RGB") else "RGB"

    def _check_corrupt_fraction(self, state: _UnitState, *, end_of_pass: bool) -> None:
        seen, corrupt = state.values["seen"], state.values["corrupt"]
        if not corrupt or (not end_of_pass and seen < _MIN_SEEN_FOR_CORRUPT_CHECK):
            return
        if corrupt / seen > self.max_corrupt_fraction:
            raise ShardReadError(
                f"{corrupt:.0f} of {seen:.0f} samples read were corrupt or unreadable ({corrupt / seen:.1%}), more "
                f"than max_corrupt_fraction={self.max_corrupt_fraction} (last: {state.last_failure}); "
                "rebuild or restore the shards, or raise the limit"
            )


def _shard_counts(urls: list[str], manifest: Manifest | None) -> dict[str, int]:
    """Sample count per URL from the manifest: by position when the manifest lists exactly
    these shards (as ``resolve_shards`` returns them), else by file name."""
    if manifest is None:
        return {}
    if len(urls) == len(manifest.shards) and all(s.name in url for url, s in zip(urls, manifest.shards)):
        return {url: s.count for url, s in zip(urls, manifest.shards)}
    by_name = {s.name: s.count for s in manifest.shards}
    return {url: by_name[Path(url).name] for url in urls if Path(url).name in by_name}


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
        raise ShardReadError(
            f"cannot batch {name!r}: samples have shapes {sorted(shapes)[:4]}; give the dataset a crop "
            "transform (e.g. convssl.views.crop_views.crop_views) and channels=1 or 3"
        )
    return torch.stack(tensors)


def _leave_signals_to_main(_worker_id: int) -> None:
    """Workers ignore SIGINT and a SIGTERM sent to the whole process group (Ctrl-C, a
    timeout, a cluster scheduler): the main process then saves a checkpoint and shuts
    them down. A SIGTERM from the parent itself (multiprocessing's ``terminate``, used
    by DataLoader's shutdown and at interpreter exit) still ends the worker, so a
    process whose loader was never shut down exits instead of waiting on its workers
    forever. A worker whose parent dies still exits (DataLoader's watchdog).

    Telling the sender apart needs ``sigwaitinfo`` (Linux, BSD); elsewhere SIGTERM is
    ignored outright.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited by the watcher thread

    def watch() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=watch, name="convssl-sigterm", daemon=True).start()


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
    if num_workers > _MAX_WORKERS:
        raise DataError(f"data.workers={num_workers}: at most {_MAX_WORKERS} loader workers per process")
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
