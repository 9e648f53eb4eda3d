"""User-facing errors.

A ``ConvsslError`` means the cause is the user's input (a path, a config key, an image
size, a corrupt shard). The CLI prints its message without a traceback and exits 2.
Every message says what was wrong and what to do.
"""


class ConvsslError(Exception):
    """An error whose cause is the user's input; the message says how to fix it."""


class ConfigError(ConvsslError):
    """A recipe or ``--set`` override is invalid (unknown key, wrong type, bad value)."""


class DataError(ConvsslError):
    """Shards or images are missing, unreadable or too often corrupt."""


class EncoderError(ConvsslError):
    """An encoder spec cannot be built or cannot take the requested input."""
