"""One line for the user from the main rank: a note on stdout, a warning on stderr, each
prefixed with the command that runs (``convssl pretrain: ...``)."""

from __future__ import annotations

import sys


def note(info, message: str, command: str = "pretrain") -> None:
    """A note for the user (no warning): one line on stdout, from the main rank."""
    if info.is_main:
        print(f"convssl {command}: {message}", flush=True)


def warn(info, message: str, command: str = "pretrain") -> None:
    """A warning the user must see: one line on stderr, from the main rank."""
    if info.is_main:
        print(f"convssl {command}: warning: {message}", file=sys.stderr, flush=True)
