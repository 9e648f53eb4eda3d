"""Loader worker processes, stopped on every exit path.

Workers ignore SIGINT/SIGTERM (``convssl.data.loader``: the main process decides
when to stop), so a worker left running when the main process ends makes
multiprocessing's exit handler wait for it forever. Whatever iterates a multi-worker
``DataLoader`` therefore stops its workers itself, error or not, through
``loader_batches`` or ``stop_workers``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator


def stop_workers(batches) -> None:
    """Shut the worker processes of a ``DataLoader`` iterator down now (a no-op for others).

    ``_shutdown_workers`` is what the iterator's own ``__del__`` calls; calling it
    while this process is healthy also keeps multiprocessing's helper threads from
    printing tracebacks after our clear message.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


@contextlib.contextmanager
def loader_batches(loader: Iterable) -> Iterator[Iterator]:
    """``with loader_batches(loader) as batches:`` iterate; the workers stop on leaving."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        stop_workers(batches)
