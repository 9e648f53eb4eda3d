"""Turn a shard spec into a list of shard paths (and the manifest, when there is one).

Accepted specs: a shard folder (its ``manifest.json`` when present, else its
``*.tar`` files in sorted order), a ``manifest.json`` path, or a brace pattern such
as ``out/shard-{000000..000009}.tar`` (``braceexpand`` syntax). Several specs can be
joined with ``::``.
"""

from __future__ import annotations

from pathlib import Path

from braceexpand import braceexpand

from convssl.data.manifest import MANIFEST_NAME, Manifest, read_manifest
from convssl.errors import DataError


def resolve_shards(spec: str | Path) -> tuple[list[str], Manifest | None]:
    """Shard paths named by ``spec``, and its manifest (None for patterns and bare folders)."""
    parts = str(spec).split("::")
    if len(parts) > 1:
        urls = [url for part in parts for url in resolve_shards(part)[0]]
        return urls, None
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return _from_manifest(path / MANIFEST_NAME)
        urls = sorted(str(p) for p in path.glob("*.tar"))
        if not urls:
            raise DataError(f"no {MANIFEST_NAME} and no *.tar shards in folder {path}; build shards with `convssl shards`")
        return urls, None
    if path.name == MANIFEST_NAME or path.suffix == ".json":
        if not path.is_file():
            raise DataError(f"shard manifest {path} does not exist; build shards with `convssl shards`")
        return _from_manifest(path)
    expanded = list(braceexpand(str(path)))
    urls = [url for url in expanded if Path(url).is_file()]
    if not urls:
        raise DataError(
            f"no shards match {spec!r} (looked for {len(expanded)} file(s), e.g. {expanded[0]}); give a shard "
            "folder, a manifest.json, or a brace pattern like out/shard-{000000..000009}.tar"
        )
    if len(urls) < len(expanded):
        missing = [url for url in expanded if not Path(url).is_file()]
        raise DataError(f"{len(missing)} of {len(expanded)} shards in {spec!r} are missing, e.g. {missing[0]}")
    return urls, None


def _from_manifest(path: Path) -> tuple[list[str], Manifest]:
    manifest = read_manifest(path)
    urls = [str(path.parent / shard.name) for shard in manifest.shards]
    if missing := [url for url in urls if not Path(url).is_file()]:
        raise DataError(f"{path} lists shards that are missing, e.g. {missing[0]}; rebuild with `convssl shards`")
    return urls, manifest
