"""The error the shard reader raises for a user's data problem (too many corrupt samples,
samples that cannot be batched, too many loader workers)."""

from __future__ import annotations

from convssl.errors import DataError


class ShardReadError(DataError):
    """A ``DataError`` raised while reading; keeps its one-line message when a DataLoader
    worker raises it (torch re-raises ``type(message=<worker traceback>)`` in the main
    process; the original message is the traceback's last line)."""

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rstrip().rpartition(marker)[2]
        super().__init__(message)
