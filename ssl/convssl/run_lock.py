"""One run per output folder: a lock file held while a run writes there.

Two runs writing into one ``--out`` interleave ``metrics.jsonl`` and overwrite each
other's checkpoints, and a ``--resume`` beside a live run continues from a checkpoint
the live run is about to replace. So a run holds ``OUT/.convssl-lock`` while it works:

- the hold is a POSIX record lock (``fcntl.lockf``) on that file. The kernel drops it
  when its process ends in any way (an error, a signal, ``kill -9``; on NFS, a node
  that dies), so a lock never outlives its run, and forked children (loader workers)
  do not inherit it. It is per process: a second run must be another process;
- the file's text names the holder (pid, host, start, command line), for the message a
  second run prints and for the note when a lock is taken over;
- a file left behind by a run that died before removing it is stale: its lock is free,
  and the next run takes it over with a note naming the run that left it.

On a file system without record locks (some FUSE mounts) the holder's pid decides: a
lock of a running pid on this host is live; one from another host is live too (its pid
cannot be checked from here), and the message says how to remove it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from convssl.errors import ConvsslError
from convssl.writable import ensure_writable_dir

LOCK_NAME = ".convssl-lock"
_BUSY = (errno.EACCES, errno.EAGAIN)  # lockf's "held by another process"


class RunInUse(ConvsslError):
    """The output folder is held by another running convssl process."""


def _note_on_stderr(message: str) -> None:
    print(f"convssl: note: {message}", file=sys.stderr, flush=True)


class RunLock:
    """``with RunLock(folder, "--out"):`` holds ``folder/.convssl-lock`` (creating the
    folder) or raises ``RunInUse`` naming the live holder; ``note`` gets the one-line
    remark when a stale lock is taken over. ``acquire``/``release`` for other lifetimes."""

    def __init__(self, folder: str | Path, what: str = "--out", *, note: Callable[[str], None] = _note_on_stderr):
        self.folder, self.what, self.note = Path(folder), what, note
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        ensure_writable_dir(self.folder, self.what)
        for _ in range(20):  # a retry only when a releasing holder removed the file under us
            fd = self._open()
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read(fd) if exc.errno in _BUSY else None
                if exc.errno in _BUSY and not holder:  # it has locked but not yet written its name
                    time.sleep(0.2)
                    holder = _read(fd)
                os.close(fd)
                if exc.errno in _BUSY:
                    raise RunInUse(self._in_use(holder)) from None
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                return self._acquire_by_pid()
            if _same_file(fd, self.path):
                return self._take(fd)
            os.close(fd)  # we locked a file its holder had just removed: try the new one
        raise RunInUse(f"{self.what} {str(self.folder)!r}: cannot take the lock {str(self.path)!r}, other runs keep "
                       "taking it; is a loop starting runs into this folder?")

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _same_file(fd, self.path):
                self.path.unlink()  # while still locked, so no one locks a file about to vanish
        except OSError:
            pass  # the folder went away or became read-only: the kernel lock still drops below
        finally:
            os.close(fd)

    # -- internals ----------------------------------------------------------------------

    def _take(self, fd: int) -> RunLock:
        previous = _read(fd)
        _write(fd, _record())
        self._fd = fd
        if previous and (previous.get("pid"), previous.get("host")) != (os.getpid(), socket.gethostname()):
            self.note(f"{self.what} {str(self.folder)!r}: took over the stale lock of {_describe(previous)}, "
                      "which is no longer running (it ended without releasing it)")
        return self

    def _acquire_by_pid(self) -> RunLock:
        """No record locks here: the recorded pid decides (see the module docstring)."""
        fd = self._open()
        holder = _read(fd)
        if holder and holder.get("pid") != os.getpid() and (
                holder.get("host") != socket.gethostname() or _running(holder.get("pid"))):
            os.close(fd)
            raise RunInUse(self._in_use(holder) + f"; if it is gone, delete {str(self.path)!r}")
        return self._take(fd)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:  # e.g. a lock file another user left, not writable by us
            raise ConvsslError(f"{self.what} {str(self.folder)!r}: cannot open its lock file {str(self.path)!r} "
                               f"({exc.strerror or exc}); if no run uses this folder, delete that file") from None

    def _in_use(self, holder: dict | None) -> str:
        who = _describe(holder) if holder else "another process"
        return (f"{self.what} {str(self.folder)!r} is in use by a running convssl run ({who}); "
                "wait for it to end (or stop it: Ctrl-C or kill PID, it saves a checkpoint), or choose another "
                f"{self.what}")


def _record() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}).encode()


def _describe(holder: dict) -> str:
    text = f"pid {holder.get('pid')} on host {holder.get('host')}"
    if holder.get("started"):
        text += f", started {holder['started']}"
    if holder.get("argv"):
        text += f": {' '.join(map(str, holder['argv']))[:200]}"
    return text


def _read(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 1 << 16, 0)
        record = json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write(fd: int, data: bytes) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _running(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def locks_out_dir(parameter: str = "out", what: str = "--out"):
    """Decorator: the function runs holding a ``RunLock`` on its argument ``parameter``
    (on the first process of a torchrun job only: it alone writes the run's files)."""
    import functools
    import inspect

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            from convssl.dist import from_env

            if not from_env().is_main:
                return function(*args, **kwargs)
            with RunLock(signature.bind(*args, **kwargs).arguments[parameter], what):
                return function(*args, **kwargs)
        return locked
    return decorate
