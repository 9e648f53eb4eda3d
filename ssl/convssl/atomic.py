"""Atomic file writes: a reader sees the old file or the new one, never half of one.

``write_atomic`` writes to a temp file in the target's folder, fsyncs it, renames it
over the target and fsyncs the folder, so the rename itself survives a power cut. A
process killed mid-write (``kill -9``, out of memory) leaves its temp file behind:
``clean_stale_temps`` removes the temps whose writer is no longer running, and the
trainer and export call it when they start. Checkpoints, exports and shard manifests
all go through here. A write that fails for want of room (a full disk, a quota, the
file size limit; torch reports a full disk without an errno) is a ``NoSpaceError``
that says so and names the file, which was left as it was.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from convssl.errors import ConvsslError

# .<target name>.<writer pid>.<random>.convssl-tmp
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.convssl-tmp$")


def write_atomic(path: str | Path, write: Callable[[Path], None] | bytes | str) -> Path:
    """Replace ``path`` atomically with what ``write`` produces.

    ``write`` is bytes, text, or a function that writes the file at the temp path it
    is given (``torch.save``, ``safetensors.torch.save_file``, ...). On any error,
    Ctrl-C included, the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.convssl-tmp")
    try:
        if isinstance(write, (bytes, str)):
            with open(tmp, "wb") as f:
                f.write(write.encode() if isinstance(write, str) else write)
        else:
            write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        # measured before the temp goes: a full disk is full now, with the temp on it
        full = _out_of_space(exc, tmp) if isinstance(exc, Exception) else None
        tmp.unlink(missing_ok=True)
        if full:
            raise NoSpaceError(f"cannot write {str(path)!r}: {full}; nothing was replaced ("
                               f"{'the previous file is intact' if path.exists() else 'no file was written'}). "
                               "Free some space or write to another disk, then run again") from None
        raise
    try:
        _fsync(path.parent)  # makes the rename durable
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename is still atomic
    return path


class NoSpaceError(ConvsslError):
    """A write failed for want of room: the disk, a quota, or the file size limit."""


# Pytorch's writer reports a full disk as a RuntimeError without an errno ("file write
# failed", "basic_ios::clear: iostream error"); below this much free space left at the
# moment a write failed, the disk being full is the reason.
_NEARLY_FULL = 1 << 20


def _out_of_space(exc: Exception, tmp: Path) -> str | None:
    """Why ``exc`` (raised writing ``tmp``) is a lack of room, in words; None if it is not."""
    errnos = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EFBIG: "file too large"}
    try:
        free = shutil.disk_usage(tmp.parent).free
    except OSError:
        free = None
    where = f" ({_size(free)} free on its file system)" if free is not None else ""
    code = getattr(exc, "errno", None)
    if code in errnos:
        limit = _file_size_limit() if code == errno.EFBIG else None
        return errnos[code] + (f" (the file size limit, ulimit -f, is {_size(limit)})" if limit else where)
    if isinstance(exc, (OSError, RuntimeError)) and free is not None and free < _NEARLY_FULL:
        return f"no space left on device{where}"
    limit = _file_size_limit()
    if limit is not None and tmp.exists() and tmp.stat().st_size >= limit:
        return f"file too large (the file size limit, ulimit -f, is {_size(limit)})"
    return None


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temp files ``write_atomic`` left in ``folder`` when its writer was killed.

    Temps of a process still running (another writer) are left alone. Returns the
    removed paths; a missing folder is fine.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        if m and not _running(int(m.group("pid"))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a temp of ours that outlived its write: a previous process had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
