"""Atomic file writes: a reader sees the old file or the new one, never half of one.

``write_atomic`` writes to a temp file in the target's folder, fsyncs it, renames it
over the target and fsyncs the folder, so the rename itself survives a power cut. A
process killed mid-write (``kill -9``, out of memory) leaves its temp file behind:
``clean_stale_temps`` removes the temps whose writer is no longer running, and the
trainer and export call it when they start. Checkpoints, exports and shard manifests
all go through here.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        _fsync(path.parent)  # makes the rename durable
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename is still atomic
    return path


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
