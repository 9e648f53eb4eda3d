"""Read a unit's pieces of shards as raw samples, re-opening a remote shard that fails.

A shard that fails to open or breaks off mid-read is re-opened up to ``retries`` times,
``retry_delay * 2**attempt`` seconds apart, continuing after the samples already read.
A shard still failing after that (a vanished shard) is skipped: its unread samples count
as corrupt ones, under the same ``max_corrupt_fraction``; the error raised past that
threshold names the shard and its last failure. A local file's errors are not
transient: it is not retried.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from convssl.data.corrupt_samples import count_missing
from convssl.data.read_stats import UnitCounters
from convssl.data.sample_decode import RawSample
from convssl.data.tar_stream import SHARD_ERRORS, describe_failure, is_local, iter_shard
from convssl.data.unit_split import Piece


@dataclass(frozen=True)
class RetryingReader:
    """retries, retry_delay: re-opens of a failing remote shard and the first wait (s).
    timeout: seconds an http(s) connection may stay silent.
    max_corrupt_fraction: the limit the unread samples of a skipped shard count against."""

    retries: int
    retry_delay: float
    timeout: float
    max_corrupt_fraction: float

    def read(self, pieces: list[Piece], counters: UnitCounters) -> Iterator[RawSample]:
        """The raw samples of ``pieces``, in order."""
        for piece in pieces:
            yield from self._read_piece(piece, counters)

    def _read_piece(self, piece: Piece, counters: UnitCounters) -> Iterator[RawSample]:
        """The piece's samples, re-opening a remote shard after a failure; a shard that
        keeps failing is skipped and its unread samples counted as corrupt."""
        wanted = range(piece.start, piece.stop if piece.stop is not None else 2**62, piece.step)
        retries = self.retries if not is_local(piece.url) else 0  # a local file's errors are not transient
        done = 0  # samples of ``wanted`` delivered so far
        failures = 0
        while True:
            index = -1
            try:
                with contextlib.closing(iter_shard(piece.url, timeout=self.timeout)) as samples:
                    while done < len(wanted):
                        started = time.perf_counter()
                        item = next(samples, None)
                        counters.add("read_s", time.perf_counter() - started)
                        if item is None:
                            break
                        index += 1
                        counters.add("read")
                        if index == wanted[done]:
                            done += 1
                            yield RawSample(piece.url, *item)
                break
            except SHARD_ERRORS as err:
                failures += 1
                counters.last_failure = f"{piece.url}: {describe_failure(getattr(err, 'cause', err), self.timeout)}"
                if failures > retries:
                    self._give_up(piece, len(wanted) - done if piece.stop is not None else 1, failures, counters)
                    return
                counters.add("retries")
                delay = self.retry_delay * 2 ** (failures - 1)
                # said at once: a frozen server otherwise means minutes of silence before the error
                warnings.warn(f"shard {counters.last_failure}; retry {failures} of {retries} in {delay:g} s",
                              stacklevel=2)
                time.sleep(delay)
        if piece.stop is not None and done < len(wanted):
            missing = len(wanted) - done
            counters.last_failure = (f"{piece.url}: it holds {index + 1} samples, its manifest says more "
                                     f"(it is truncated or stale: rebuild it with `convssl shards`)")
            count_missing(counters, missing, f"shard {piece.url} ended {missing} sample(s) early",
                          self.max_corrupt_fraction)

    def _give_up(self, piece: Piece, missing: int, tries: int, counters: UnitCounters) -> None:
        counters.add("failed_shards")
        count_missing(counters, missing, f"giving up on shard {piece.url} after {tries} tries "
                                         f"({counters.last_failure.partition(': ')[2]})", self.max_corrupt_fraction)
