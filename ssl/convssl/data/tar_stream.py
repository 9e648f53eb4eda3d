"""Open one shard URL and stream its samples as ``(key, {extension: bytes})``, via webdataset.

URLs: a local path or ``file:`` URL, ``pipe:CMD`` (the command writes the tar to its
stdout, e.g. ``pipe:aws s3 cp s3://bucket/shard-000000.tar -``), ``http(s)://``, and
the other schemes of ``webdataset.gopen`` (``gs:``, ``ais:``, ``hf:``, ...).

Everything except http(s) is opened by ``webdataset.gopen.gopen``. http(s) is opened
with the standard library instead of gopen's ``curl`` command: that command retries
on its own (30 times, 2 s apart, not configurable), which would hide a dead server
behind a minute of silence per shard, needs a ``curl`` binary that slim images lack,
and reports failures as "exit 22"; ``urllib`` gives the HTTP status and lets the
reader's own bounded retries decide (``convssl.data.retrying_reader``).

The tar format is parsed by webdataset (``tar_file_iterator``: ``tarfile`` in stream
mode, gzip detected) and members grouped into samples by ``group_by_keys``: the key is
the member path up to the first "." of its file name, the extension is the rest
(``a/b.seg.png`` -> key ``a/b``, extension ``seg.png``). No tar parsing is done here.

Failures surface as ``UnreadableShard`` (a ``DataError`` and an ``OSError``) from
``iter_shard``, its ``cause`` one of: ``OSError`` (missing file, HTTP error, a failing ``pipe:`` command),
``http.client.HTTPException`` (a connection cut mid-body),
``tarfile.TarError`` (not a tar, cut inside a member) or ``ValueError`` (duplicate
members); ``SHARD_ERRORS`` lists them for callers.
"""

from __future__ import annotations

import http.client
import io
import tarfile
import urllib.request
import zlib
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import urlparse

from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_iterator

from convssl.errors import DataError

SHARD_ERRORS = (OSError, EOFError, http.client.HTTPException, tarfile.TarError, zlib.error, ValueError)
_HTTP_SCHEMES = ("http", "https")


def scheme(url: str) -> str:
    """The URL scheme (``pipe``, ``https``, ...), or "" for a local path (also ``C:\\...``)."""
    parsed = urlparse(url).scheme
    return parsed if len(parsed) > 1 else ""


def is_local(url: str) -> bool:
    """Whether ``url`` names a file on this machine (a path or a ``file:`` URL)."""
    return scheme(url) in ("", "file")


def local_path(url: str) -> str:
    """The file system path of a local ``url``."""
    return urlparse(url).path if scheme(url) == "file" else url


def open_shard(url: str, *, timeout: float = 60.0) -> BinaryIO:
    """A readable binary stream of ``url`` (the caller closes it)."""
    if scheme(url) in _HTTP_SCHEMES:
        request = urllib.request.Request(url, headers={"User-Agent": "convssl"})
        return _CheckedBody(urllib.request.urlopen(request, timeout=timeout))  # noqa: S310 (http(s) only)
    return gopen(local_path(url) if is_local(url) else url, "rb")


class _CheckedBody(io.RawIOBase):
    """An HTTP response body that raises when the connection ends before Content-Length
    bytes arrived (``http.client`` then just returns b"", and a tar cut between two
    members would read as a shorter, valid shard)."""

    def __init__(self, response):
        self.response, self.received = response, 0
        length = response.headers.get("Content-Length")
        self.length = int(length) if length and length.isdigit() else None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.response.readinto(buffer)
        self.received += count
        if not count and len(buffer) and self.length is not None and self.received < self.length:
            raise ConnectionError(f"the connection closed after {self.received} of {self.length} bytes")
        return count

    def close(self) -> None:
        self.response.close()
        super().close()


class UnreadableShard(DataError, OSError):
    """A shard that cannot be opened or read (``cause``: the original error). A
    ``DataError``, so a command that reads shards directly (probe's label check, the
    fine-tuning label index) stops with one line naming the shard instead of a
    ``tarfile`` traceback; an ``OSError``, so the reader's retry and give-up logic
    (``SHARD_ERRORS``) treats it as before."""

    def __init__(self, url: str, cause: BaseException, timeout: float):
        self.url, self.cause = url, cause
        super().__init__(f"cannot read shard {url}: {describe_failure(cause, timeout)}")


def describe_failure(err: BaseException, timeout: float) -> str:
    """One line for a shard failure, saying what it means where Python's words do not."""
    text = f"{type(err).__name__}: {err}"
    if isinstance(err, tarfile.ReadError) and "empty file" in str(err):
        return text + " (a 0-byte file is no tar archive: an interrupted copy? rebuild it with `convssl shards`)"
    if isinstance(err, TimeoutError) or "timed out" in str(err):
        return text + f" (no data for {timeout:g} s: the server accepted the connection but did not answer)"
    return text


def iter_shard(url: str, *, timeout: float = 60.0) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples of the tar shard at ``url``, in file order; raises ``UnreadableShard``
    (an ``OSError``, so one of ``SHARD_ERRORS``) with the original error as its cause."""
    try:
        yield from _iter_shard(url, timeout)
    except UnreadableShard:
        raise
    except SHARD_ERRORS as err:
        raise UnreadableShard(url, err, timeout) from err


def _iter_shard(url: str, timeout: float) -> Iterator[tuple[str, dict[str, bytes]]]:
    stream = open_shard(url, timeout=timeout)
    completed = False
    try:
        files = ({**member, "__url__": url} for member in tar_file_iterator(stream))
        for sample in group_by_keys(files):
            key = sample.pop("__key__")
            yield key, {ext: data for ext, data in sample.items() if not ext.startswith("__")}
        completed = True
    finally:
        try:
            stream.close()  # a pipe: command's exit status is checked here
        except OSError:
            if completed:  # stopped early, a command killed by SIGPIPE is expected
                raise
