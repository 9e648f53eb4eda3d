"""Stream the samples of one webdataset tar shard as (key, {extension: bytes}).

Members are grouped by key the way webdataset does it: the key is the member path
up to the first "." of its file name, the extension is the rest
(``a/b.seg.png`` -> key ``a/b``, extension ``seg.png``). Consecutive members with
the same key form one sample.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from convssl.errors import DataError


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Samples of the tar (optionally gzipped) at ``path``, in file order.

    Raises ``DataError`` naming the shard when it is missing, truncated or not a tar.
    """
    key, members = None, {}
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = _split_name(member.name)
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is cut short")
                if member_key != key:
                    if key is not None:
                        yield key, members
                    key, members = member_key, {}
                members[ext] = data
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"shard {path} is unreadable or truncated ({err}); rebuild it with `convssl shards`") from err
    if key is not None:
        yield key, members


def _split_name(name: str) -> tuple[str, str]:
    folder, _, file_name = name.rpartition("/")
    stem, _, ext = file_name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()
