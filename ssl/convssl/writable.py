"""Check an output folder before any heavy work: creatable, a folder, writable.

A command that finds out only at its end that it cannot write (a read-only mount, a
folder owned by someone else, ``--out`` under a file) has wasted the user's time, and
one that finds out while loader workers run can leave them behind. Commands call
``ensure_writable_dir`` first, so the mistake is one line, before anything starts.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from convssl.errors import ConvsslError


def ensure_writable_dir(folder: str | Path, what: str = "--out") -> Path:
    """Create ``folder`` (and its parents) if needed and check a file can be written in it.

    Raises ``ConvsslError`` naming ``what`` (the flag the user gave) otherwise.
    """
    folder = Path(folder)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConvsslError(f"{what} {str(folder)!r}: {str(blocker)!r} is a file, not a folder; "
                           "choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".convssl-write-check.{os.getpid()}.{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as exc:
        raise ConvsslError(f"{what} {str(folder)!r} is not writable ({exc.strerror or exc}); "
                           "choose a folder you can write to") from None
    return folder
