"""A ``DataLoader`` over a ``ShardDataset``: batched by ``collate_samples``, its workers
leaving SIGINT/SIGTERM to the main process."""

from __future__ import annotations

import os
import signal
import threading

import torch
from torch.utils.data import DataLoader

from convssl.data.collate import collate_samples
from convssl.data.read_stats import MAX_WORKERS
from convssl.data.shard_dataset import ShardDataset
from convssl.errors import DataError


def make_loader(
    dataset: ShardDataset,
    batch_size: int,
    num_workers: int,
    *,
    pin_memory: bool | None = None,
    prefetch_factor: int | None = 4,
    persistent_workers: bool | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` that batches with ``collate_samples``.

    Defaults: persistent workers when ``num_workers > 0``, pinned memory only when CUDA
    is available. In infinite mode every batch is full, so ``drop_last`` only matters
    for the last batch of each worker in finite mode.
    """
    if dataset.start_batches and dataset.batch_size != batch_size:
        raise ValueError(f"the dataset resumes batches of {dataset.batch_size}, the loader makes {batch_size}")
    if num_workers > MAX_WORKERS:
        raise DataError(f"data.workers={num_workers}: at most {MAX_WORKERS} loader workers per process")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        worker_init_fn=_leave_signals_to_main,
        collate_fn=collate_samples,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0 if persistent_workers is None else persistent_workers,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        drop_last=drop_last,
    )


def _leave_signals_to_main(_worker_id: int) -> None:
    """Workers ignore SIGINT and a SIGTERM sent to the whole process group (Ctrl-C, a
    timeout, a cluster scheduler): the main process then saves a checkpoint and shuts
    them down. A SIGTERM from the parent itself (multiprocessing's ``terminate``, used
    by DataLoader's shutdown and at interpreter exit) still ends the worker, so a
    process whose loader was never shut down exits instead of waiting on its workers
    forever. A worker whose parent dies still exits (DataLoader's watchdog).

    Telling the sender apart needs ``sigwaitinfo`` (Linux, BSD); elsewhere SIGTERM is
    ignored outright.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited by the watcher thread

    def watch() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=watch, name="convssl-sigterm", daemon=True).start()
