"""What the shard reader did (``ReadStats``), counted per process in shared memory.

Each DataLoader worker (and the main process, as worker 0 when there are none) owns one
row of a shared-memory table and writes its counters there (``UnitCounters``): every
``FLUSH_EVERY`` samples, on every corrupt sample or failed shard, and at the end of a
pass. ``sum_stats`` adds the rows up in the main process.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

MAX_WORKERS = 256  # rows of the shared statistics table
FLUSH_EVERY = 64  # samples between two writes of a worker's counters to shared memory


@dataclass
class ReadStats:
    """What the reader did, summed over the main process and every worker.

    read: raw samples taken from shard streams (also those passed over to reach a unit's
        range, skipped on resume, or re-read after a retry).
    seen: samples decoded, corrupt ones included, plus the unread samples of failed shards.
    corrupt: samples that could not be decoded, plus the unread samples of failed shards
        (known from the manifest; 1 per failed shard without one).
    failed_shards: shards given up on after their retries.
    retries: shard re-opens after a failure.
    read_s, decode_s: seconds spent reading shards (I/O and tar parsing), and decoding +
        transforming samples.
    """

    read: int = 0
    seen: int = 0
    corrupt: int = 0
    failed_shards: int = 0
    retries: int = 0
    read_s: float = 0.0
    decode_s: float = 0.0


STAT_NAMES = tuple(f.name for f in fields(ReadStats))


def new_stats_table() -> torch.Tensor:
    """A zeroed shared-memory table: one row of counters per worker."""
    return torch.zeros(MAX_WORKERS, len(STAT_NAMES), dtype=torch.float64).share_memory_()


def sum_stats(table: torch.Tensor) -> ReadStats:
    """Every row of ``table`` added up (counts as ints, seconds as floats)."""
    totals = table.sum(0).tolist()
    return ReadStats(**{name: (value if name.endswith("_s") else int(value))
                        for name, value in zip(STAT_NAMES, totals)})


class UnitCounters:
    """One process's counters (its row of the shared table) and its last shard failure."""

    def __init__(self, table: torch.Tensor, row: int):
        self.table, self.row = table, row
        self.values = dict(zip(STAT_NAMES, table[row].tolist()))
        self.unflushed = 0
        self.last_failure = ""

    def add(self, name: str, amount: float = 1) -> None:
        self.values[name] += amount

    def tick(self) -> None:
        self.unflushed += 1
        if self.unflushed >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        self.table[self.row] = torch.tensor([self.values[n] for n in STAT_NAMES], dtype=torch.float64)
        self.unflushed = 0
