"""`convssl shards` on bad data: decompression bombs, truncated JPEGs, files that are not
images; each skipped file named (on the terminal and in the manifest); writer-process
failures as one line."""

from __future__ import annotations

import argparse
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convssl.commands import shards as shards_command
from convssl.data.manifest import read_manifest
from convssl.data.shard_dataset import ShardDataset
from convssl.data.sources import Sample, open_source
from convssl.data.writer import write_shards
from convssl.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes claiming ``width x height`` gray pixels (the rows are zeros,
    compressed): decoding it would need width * height bytes of memory."""
    row = b"\0" * (width + 1)
    compressor = zlib.compressobj(9)
    rows = b"".join(compressor.compress(row) for _ in range(64)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    """6 good images, a truncated JPEG, two decompression bombs, a text file named .png."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / f"good{i}.png")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    (root / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 6 // 10])
    (root / "bomb-error.png").write_bytes(_bomb_png(20000, 20000))  # 400 Mpx: PIL refuses at open
    (root / "bomb-warning.png").write_bytes(_bomb_png(10000, 10000))  # 100 Mpx: PIL only warns
    (root / "text.png").write_text("not a png at all")
    return root


def test_bad_files_are_skipped_named_and_listed_in_the_manifest(bad_folder: Path, tmp_path: Path, capsys):
    with Image.open(bad_folder / "cut.jpg") as img:  # the old header-only check admitted it
        assert img.size == (64, 64)
    parser = argparse.ArgumentParser()
    shards_command.add_arguments(parser)
    assert shards_command.run(parser.parse_args([str(bad_folder), str(tmp_path / "out"), "--workers", "2",
                                                 "--maxcount", "2"])) == 0
    printed = capsys.readouterr().out
    assert "6 samples" in printed and "skipped 4 unreadable files" in printed
    for name in ("cut.jpg", "bomb-error.png", "bomb-warning.png", "text.png"):
        assert f"  {name}: " in printed
    manifest = read_manifest(tmp_path / "out")
    reasons = {f.file: f.reason for f in manifest.skipped_files}
    assert manifest.skipped == 4 and set(reasons) == {"cut.jpg", "bomb-error.png", "bomb-warning.png", "text.png"}
    assert "truncated" in reasons["cut.jpg"]
    assert "DecompressionBombError" in reasons["bomb-error.png"] and "DecompressionBombError" in reasons["bomb-warning.png"]
    dataset = ShardDataset(str(tmp_path / "out"), max_corrupt_fraction=0.0)
    assert sorted(s["key"] for s in dataset) == [f"good{i}" for i in range(6)]
    assert dataset.stats.corrupt == 0


def test_cli_reports_a_bad_source_in_one_line(tmp_path: Path, capsys):
    from convssl.cli import main

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "only.png").write_text("not an image")
    assert main(["shards", str(tmp_path / "src"), str(tmp_path / "out"), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no readable images" in err and "Traceback" not in err


class ExplodingSource:
    """A source whose item 5 raises an unexpected error (not a bad image: a bug, a full disk)."""

    labeled, classes, description = False, (), "exploding test source"

    def __len__(self) -> int:
        return 8

    def sample(self, index: int) -> Sample:
        if index == 5:
            raise RuntimeError("disk on fire")
        buffer = io.BytesIO()
        Image.new("L", (4, 4), index).save(buffer, format="PNG")
        return Sample(f"s{index}", buffer.getvalue(), "png", None, "L")


@pytest.mark.parametrize("workers", [1, 2])
def test_writer_failures_are_one_line(tmp_path: Path, workers: int):
    with pytest.raises(DataError) as caught:
        write_shards(ExplodingSource(), tmp_path / "out", maxcount=4, workers=workers)
    message = str(caught.value)
    assert "\n" not in message and "RuntimeError: disk on fire" in message
    assert f"shard writer {workers - 1} failed on item 5 of exploding test source" in message
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_source_with_huge_header_only_is_not_decoded(tmp_path: Path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bomb.png").write_bytes(_bomb_png(20000, 20000))
    Image.new("RGB", (8, 8)).save(tmp_path / "src" / "ok.png")
    manifest = write_shards(open_source(str(tmp_path / "src")), tmp_path / "out")
    assert manifest.count == 1 and [f.file for f in manifest.skipped_files] == ["bomb.png"]
