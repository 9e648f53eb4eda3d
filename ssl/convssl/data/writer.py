"""Write a source's images into webdataset tar shards plus a ``manifest.json``.

Each sample is a group of tar members sharing a key: ``<key>.<ext>`` holds the image
(original bytes unless resizing or re-encoding is asked for) and ``<key>.cls`` the
class index as ASCII digits when labeled. The tars are written by webdataset's
``ShardWriter`` (PAX format, fixed owner and mtime 0, so identical inputs give
identical shards); a shard is closed once it holds ``maxcount`` samples or its image
bytes reach ``maxsize``.

Every file is decoded completely before it is stored (``sources``); one that fails is
left out, and the manifest lists it with the decoder's reason (``skipped_files``).

Parallel writers each take a contiguous slice of the source and write their shards
under temporary names; the shards are then renamed, in slice order, into one
sequence ``shard-000000.tar, shard-000001.tar, ...`` so the sample order does not
depend on the number of writers. Slices are cut at multiples of ``maxcount``, so
unless ``maxsize`` or unreadable files cut a shard early, the shards are the same as
one writer's. The manifest is written last (atomically), so an
interrupted run never leaves a manifest pointing at missing or half-written shards.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from webdataset import ShardWriter

from convssl.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, SkippedFile, read_manifest
from convssl.data.sources import Sample, Source, UnreadableFile
from convssl.errors import DataError
from convssl.writable import ensure_writable_dir

SHARD_PATTERN = "shard-{index:06d}.tar"
_TEMP_PREFIX = ".convssl-tmp-"
_REENCODE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
_JPEG_QUALITY = 95  # high enough that re-encoding adds no visible artefacts
# Modes PNG and JPEG write as they are (Pillow's writers refuse the others; its WebP
# writer converts any mode itself).
_MODES_KEPT = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"), "JPEG": ("L", "RGB")}
_MODE_CHANNELS = {"1": 1, "L": 1, "P": 3, "RGB": 3, "YCbCr": 3, "CMYK": 3, "LA": 2, "RGBA": 4}


@dataclass(frozen=True)
class _SliceJob:
    """What one writer process does: samples ``start <= i < stop`` into temp shards."""

    source: Source
    temp_dir: Path
    writer_id: int
    start: int
    stop: int
    labeled: bool
    maxcount: int
    maxsize: int
    resize: int | None
    reencode: str | None


@dataclass(frozen=True)
class _SliceResult:
    shards: tuple[ShardInfo, ...]  # names are temp file names inside temp_dir
    skipped: tuple[SkippedFile, ...]
    modes: frozenset[str]


def write_shards(
    source: Source,
    out_dir: str | Path,
    *,
    maxcount: int = 1000,
    maxsize: int = 256 * 2**20,
    resize: int | None = None,
    reencode: str | None = None,
    workers: int = 1,
    labeled: bool | None = None,
    classes: tuple[str, ...] | None = None,
    start: int = 0,
    stop: int | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Write samples ``start <= i < stop`` of ``source`` as shards in ``out_dir``.

    Args:
        source: from ``convssl.data.sources.open_source``.
        out_dir: created if missing. An earlier convssl output there is replaced; any
            other non-empty folder is refused unless ``overwrite``.
        maxcount: most samples per shard.
        maxsize: a shard is closed once its image bytes reach this (so it may exceed it by
            one sample and the tar headers).
        resize: shrink images whose shorter side is longer than this to exactly this
            shorter side (never enlarges); implies re-encoding those images.
        reencode: "png" | "jpg" | "webp" to re-encode every image; None keeps the
            original bytes (resized images keep their format when it is one of these).
        workers: parallel writer processes.
        labeled: None follows the source; False drops the labels of a labeled source.
        classes: class names to record; None takes the source's.
    Returns:
        The manifest written to ``out_dir/manifest.json``.
    """
    labeled = source.labeled if labeled is None else labeled
    if labeled and not source.labeled:
        raise DataError(f"{source.description} has no labels; write it unlabeled, or give an ImageFolder tree")
    if reencode is not None and reencode.lower() not in _REENCODE_FORMATS:
        raise DataError(f"cannot re-encode as {reencode!r}; use one of: png, jpg, webp")
    if maxcount < 1 or maxsize < 1 or workers < 1 or (resize is not None and resize < 1):
        raise DataError("maxcount, maxsize, workers and resize must be positive")
    stop = len(source) if stop is None else min(stop, len(source))
    if not 0 <= start < stop:
        raise DataError(f"empty sample range start={start} stop={stop}: the source has {len(source)} samples")

    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    temp_dir = out_dir / f"{_TEMP_PREFIX}{os.getpid()}"
    temp_dir.mkdir()
    try:
        jobs = [
            _SliceJob(source, temp_dir, writer_id, lo, hi, labeled, maxcount, maxsize, resize,
                      reencode.lower() if reencode else None)
            for writer_id, (lo, hi) in enumerate(_split_range(start, stop, workers, maxcount))
        ]
        if len(jobs) == 1:
            results = [_write_slice(jobs[0])]
        else:
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            try:
                with ProcessPoolExecutor(len(jobs), mp_context=context) as pool:
                    results = list(pool.map(_write_slice, jobs))
            except BrokenProcessPool:
                raise DataError("a shard writer process died (out of memory?); retry with fewer --workers") from None
        manifest = _publish(out_dir, temp_dir, results, source, labeled, classes)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    if manifest.skipped:
        names = [f.file for f in manifest.skipped_files]
        warnings.warn(f"skipped {manifest.skipped} unreadable files in {source.description} "
                      f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}; "
                      f"all listed in {MANIFEST_NAME})", stacklevel=2)
    return manifest


def _split_range(start: int, stop: int, parts: int, align: int) -> list[tuple[int, int]]:
    """Contiguous, non-empty slices of ``range(start, stop)`` in order, cut at multiples of
    ``align`` past ``start`` so that parallel writers cut shards where one writer would."""
    chunks = -(-(stop - start) // align)
    parts = min(parts, chunks)
    bounds = [min(stop, start + align * (chunks * p // parts)) for p in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output {out_dir} exists and is not a folder; choose another OUT")
    ensure_writable_dir(out_dir, "OUT")  # a read-only mount or a path under a file: one line, before any work
    for stale in out_dir.glob(f"{_TEMP_PREFIX}*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    foreign = [p.name for p in out_dir.iterdir() if not _is_convssl_output(p)]
    if foreign and not overwrite:
        raise DataError(
            f"output folder {out_dir} is not empty and not an earlier convssl shard output "
            f"(it holds {', '.join(sorted(foreign)[:3])}{', ...' if len(foreign) > 3 else ''}); "
            "choose an empty OUT, or pass --overwrite (only shard-*.tar and manifest.json are replaced)"
        )


def _is_convssl_output(path: Path) -> bool:
    if path.name == MANIFEST_NAME:
        try:
            read_manifest(path)
            return True
        except DataError:
            return False
    return path.name.startswith("shard-") and path.suffix == ".tar"


def _write_slice(job: _SliceJob) -> _SliceResult:
    """Write one slice of samples into numbered temp shards; runs in a writer process.

    Any failure becomes one ``DataError`` line naming the writer and its samples (a
    writer process's traceback would otherwise reach the user).
    """
    try:
        return _write_slice_unguarded(job)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - reported as one line, with its type
        raise DataError(f"shard writer {job.writer_id} (samples {job.start}-{job.stop - 1} of "
                        f"{job.source.description}) failed: {type(err).__name__}: {err}") from None


def _write_slice_unguarded(job: _SliceJob) -> _SliceResult:
    shards, modes, skipped = [], set(), []
    counts: dict[str, int] = {}

    def finished(fname: str) -> None:
        path = Path(fname)
        if not counts.get(fname):  # ShardWriter opens a shard before its first sample
            path.unlink()
            return
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        shards.append(ShardInfo(path.name, counts[fname], path.stat().st_size))

    pattern = str(job.temp_dir / f"w{job.writer_id:04d}-%06d.tar")
    with ShardWriter(pattern, maxcount=job.maxcount, maxsize=job.maxsize, post=finished, verbose=0,
                     encoder=False, user="convssl", group="convssl", mtime=0, format="PAX_FORMAT") as sink:
        for index in range(job.start, job.stop):
            try:
                sample = _transcode(job.source.sample(index), job.resize, job.reencode)
            except UnreadableFile as err:
                skipped.append(SkippedFile(err.file, err.reason))
                continue
            except Exception as err:  # noqa: BLE001 - not a bad image: report it, as one line
                raise DataError(f"shard writer {job.writer_id} failed on item {index} of {job.source.description}: "
                                f"{type(err).__name__}: {err}") from None
            record = {"__key__": sample.key, sample.ext: sample.data}
            if job.labeled:
                record["cls"] = str(sample.label).encode("ascii")
            sink.write(record)
            counts[sink.fname] = counts.get(sink.fname, 0) + 1
            modes.add(sample.mode)
    return _SliceResult(tuple(shards), tuple(skipped), frozenset(modes))


def _transcode(sample: Sample, resize: int | None, reencode: str | None) -> Sample:
    """Resize (shorter side, shrink only) and/or re-encode; else the sample unchanged."""
    if resize is None and reencode is None:
        return sample
    try:
        return _transcoded(sample, resize, reencode)
    except Exception as err:  # noqa: BLE001 - PIL's plugins raise many types
        raise UnreadableFile(sample.key, f"cannot re-encode: {type(err).__name__}: {err}") from None


def _transcoded(sample: Sample, resize: int | None, reencode: str | None) -> Sample:
    with Image.open(io.BytesIO(sample.data)) as img:
        img.load()
        needs_resize = resize is not None and min(img.size) > resize
        if not needs_resize and (reencode is None or reencode == sample.ext):
            return sample
        if needs_resize:
            width, height = img.size
            scale = resize / min(width, height)
            new_size = (max(resize, round(width * scale)), max(resize, round(height * scale)))
            img = img.resize(new_size, Image.Resampling.BICUBIC)
        ext = reencode or (sample.ext if sample.ext in _REENCODE_FORMATS else "png")
        image_format = _REENCODE_FORMATS[ext]
        if image_format in _MODES_KEPT and img.mode not in _MODES_KEPT[image_format]:
            # CMYK, YCbCr, LAB, HSV, 32-bit... are valid images each format cannot store as
            # they are: RGB (with alpha where the format keeps it) loses nothing a convnet reads
            alpha = "A" in img.getbands() and "RGBA" in _MODES_KEPT[image_format]
            img = img.convert("RGBA" if alpha else "RGB")
        buffer = io.BytesIO()
        img.save(buffer, format=image_format, **({"quality": _JPEG_QUALITY} if image_format == "JPEG" else {}))
    return Sample(sample.key, buffer.getvalue(), "jpg" if ext == "jpeg" else ext, sample.label, img.mode)


def _publish(
    out_dir: Path,
    temp_dir: Path,
    results: list[_SliceResult],
    source: Source,
    labeled: bool,
    classes: tuple[str, ...] | None,
) -> Manifest:
    """Replace any earlier output by the new shards, then write the manifest."""
    if not any(result.shards for result in results):
        raise DataError(f"no readable images in {source.description}; nothing was written")
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # first: the folder stops claiming completeness
    for old in out_dir.glob("shard-*.tar"):
        old.unlink()
    shards = []
    for temp_shard in (shard for result in results for shard in result.shards):
        name = SHARD_PATTERN.format(index=len(shards))
        os.replace(temp_dir / temp_shard.name, out_dir / name)
        shards.append(ShardInfo(name, temp_shard.count, temp_shard.bytes))
    modes = sorted(set().union(*(result.modes for result in results)))
    channel_counts = {_MODE_CHANNELS.get(mode) for mode in modes}
    manifest = Manifest(
        shards=tuple(shards),
        labeled=labeled,
        classes=tuple(source.classes if classes is None else classes) if labeled else (),
        modes=tuple(modes),
        channels=channel_counts.pop() if len(channel_counts) == 1 else None,
        source=source.description,
        skipped=sum(len(result.skipped) for result in results),
        skipped_files=tuple(file for result in results for file in result.skipped),
    )
    manifest.write(out_dir)
    return manifest
