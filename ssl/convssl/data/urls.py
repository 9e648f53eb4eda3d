"""Turn a shard spec into a list of shard URLs (and the manifest, when there is one).

Accepted specs:

- a local shard folder (its ``manifest.json`` when present, else its ``*.tar`` files in
  sorted order), or a local ``manifest.json`` path;
- a brace pattern such as ``out/shard-{000000..000009}.tar`` (``braceexpand`` syntax),
  local or with a scheme: ``https://host/shards/shard-{000000..000099}.tar``,
  ``pipe:aws s3 cp s3://bucket/shard-{000000..000099}.tar -``, ``gs://...``;
- a remote manifest, any URL ending in ``manifest.json`` (or ``.json``), e.g.
  ``https://host/shards/manifest.json`` or
  ``pipe:aws s3 cp s3://bucket/shards/manifest.json -``: it is read once, and each
  shard's URL is the manifest's URL with its file name replaced by the shard's.

Several specs can be joined with ``::``. Local shards are checked to exist here; remote
ones are not (a missing one fails when read, after the reader's retries).
"""

from __future__ import annotations

from pathlib import Path

from braceexpand import braceexpand

from convssl.data.manifest import MANIFEST_NAME, Manifest, parse_manifest, read_manifest
from convssl.data.tar_stream import SHARD_ERRORS, is_local, local_path, open_shard
from convssl.errors import DataError


def resolve_shards(spec: str | Path) -> tuple[list[str], Manifest | None]:
    """Shard URLs named by ``spec``, and its manifest (None for patterns, bare folders and joins)."""
    parts = str(spec).split("::")
    if len(parts) > 1:
        urls = [url for part in parts for url in resolve_shards(part)[0]]
        return urls, None
    if not is_local(str(spec)):
        return _remote(str(spec))
    path = Path(local_path(str(spec))).expanduser()
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


def _remote(spec: str) -> tuple[list[str], Manifest | None]:
    name = _manifest_name(spec)
    if name is None:
        return list(braceexpand(spec)), None
    try:
        with open_shard(spec) as stream:
            text = stream.read().decode("utf-8")
    except (*SHARD_ERRORS, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the shard manifest {spec}: {err}") from err
    manifest = parse_manifest(text, spec)
    head, _, tail = spec.rpartition(name)
    return [f"{head}{shard.name}{tail}" for shard in manifest.shards], manifest


def _manifest_name(spec: str) -> str | None:
    """The manifest file name a remote spec ends with (before a pipe command's arguments)."""
    for word in reversed(spec.replace("/", " ").split()):
        if word.endswith(".json"):
            return word
    return None
