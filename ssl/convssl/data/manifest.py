"""``manifest.json``: what a shard folder holds, written last by the shard writer.

A folder with a manifest is a complete convssl output: every shard it lists was
fully written before the manifest was renamed into place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from convssl.atomic import write_atomic
from convssl.errors import DataError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ShardInfo:
    """One shard: file name (relative to the manifest), sample count, size in bytes."""

    name: str
    count: int
    bytes: int


@dataclass(frozen=True)
class SkippedFile:
    """A source file the writer left out, and why (the decoder's message)."""

    file: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A shard folder's description.

    ``modes`` lists the PIL modes of the stored images ("L", "RGB", ...); ``channels``
    is 1 or 3 when every image has that many channels, else None.
    """

    shards: tuple[ShardInfo, ...]
    labeled: bool
    classes: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    channels: int | None = None
    source: str = ""
    skipped: int = 0  # unreadable source files left out
    skipped_files: tuple[SkippedFile, ...] = ()  # which ones, and why
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Total number of samples over all shards."""
        return sum(shard.count for shard in self.shards)

    @property
    def bytes(self) -> int:
        """Total size of all shards in bytes."""
        return sum(shard.bytes for shard in self.shards)

    def to_json(self) -> str:
        """The manifest as JSON text (``count`` included for readers of the file)."""
        record = {"format": "convssl-shards", **asdict(self), "count": self.count}
        return json.dumps(record, indent=1) + "\n"

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/manifest.json`` atomically (temp file, fsync, rename)."""
        return write_atomic(Path(folder) / MANIFEST_NAME, self.to_json())


def read_manifest(path: str | Path) -> Manifest:
    """Read a ``manifest.json`` (or the one in folder ``path``)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        text = path.read_text()
    except OSError as err:
        raise DataError(f"cannot read shard manifest {path}: {err}; rebuild it with `convssl shards`") from err
    return parse_manifest(text, str(path))


def parse_manifest(text: str, where: str) -> Manifest:
    """The manifest in JSON ``text`` read from ``where`` (a path or URL, for messages)."""
    path = where
    try:
        record = json.loads(text)
    except ValueError as err:
        raise DataError(f"cannot read shard manifest {path}: {err}; rebuild it with `convssl shards`") from err
    if not isinstance(record, dict) or record.get("format") != "convssl-shards":
        raise DataError(f"{path} is not a convssl shard manifest; rebuild the shards with `convssl shards`")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(f"{path} has format version {record['format_version']}; upgrade convssl to read it")
    try:
        return Manifest(
            shards=tuple(ShardInfo(**shard) for shard in record["shards"]),
            labeled=bool(record["labeled"]),
            classes=tuple(record.get("classes", ())),
            modes=tuple(record.get("modes", ())),
            channels=record.get("channels"),
            source=record.get("source", ""),
            skipped=int(record.get("skipped", 0)),
            skipped_files=tuple(SkippedFile(**item) for item in record.get("skipped_files", ())),
            format_version=int(record.get("format_version", FORMAT_VERSION)),
            extra=dict(record.get("extra", {})),
        )
    except (KeyError, TypeError) as err:
        raise DataError(f"shard manifest {path} is malformed ({err}); rebuild it with `convssl shards`") from err
