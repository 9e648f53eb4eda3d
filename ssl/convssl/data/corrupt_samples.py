"""Corrupt samples: counted, replaced in place, and an error past a threshold.

Corrupt samples keep their position. An undecodable sample at position p is counted
and replaced by the nearest decodable raw sample before it (at most ``LOOK_BACK``
back, in the same pass), else by the next decodable one, made into a sample with
position p's randomness. So the positions of the yielded stream are the raw stream's,
and a resumed run (which skips raw samples by count) yields exactly the samples and
crops of an uninterrupted one, corrupt samples before the resume point or not.

The unread samples of a shard given up on, or of one shorter than its manifest says,
count as corrupt too (``count_missing``), under the same ``max_corrupt_fraction``.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator

from convssl.data.read_error import ShardReadError
from convssl.data.read_stats import UnitCounters
from convssl.data.sample_decode import CorruptSample, Decoded, RawSample

MIN_SEEN_FOR_CORRUPT_CHECK = 50
LOOK_BACK = 8  # raw samples kept to stand in for a corrupt one


def check_corrupt_fraction(counters: UnitCounters, max_corrupt_fraction: float, *, end_of_pass: bool) -> None:
    """Raise ``ShardReadError`` when corrupt / seen exceeds ``max_corrupt_fraction``
    (checked from ``MIN_SEEN_FOR_CORRUPT_CHECK`` samples on, and at the end of a pass)."""
    seen, corrupt = counters.values["seen"], counters.values["corrupt"]
    if not corrupt or (not end_of_pass and seen < MIN_SEEN_FOR_CORRUPT_CHECK):
        return
    if corrupt / seen > max_corrupt_fraction:
        raise ShardReadError(
            f"{corrupt:.0f} of {seen:.0f} samples read were corrupt or unreadable ({corrupt / seen:.1%}), more "
            f"than max_corrupt_fraction={max_corrupt_fraction} (last: {counters.last_failure}); "
            "rebuild or restore the shards, or raise the limit"
        )


def count_missing(counters: UnitCounters, missing: int, what: str, max_corrupt_fraction: float) -> None:
    """Count ``missing`` unread samples as seen and corrupt, and say so (``what``: why)."""
    counters.add("seen", missing)
    counters.add("corrupt", missing)
    counters.flush()
    warnings.warn(f"{what}; its {missing} unread sample(s) count as corrupt", stacklevel=3)
    check_corrupt_fraction(counters, max_corrupt_fraction, end_of_pass=False)


def positioned_samples(
    raws: Iterator[RawSample],
    to_skip: int,
    decode: Callable[[RawSample], Decoded],
    make_sample: Callable[[Decoded, int], dict],
    counters: UnitCounters,
    max_corrupt_fraction: float,
) -> Iterator[dict]:
    """One sample per raw position after the first ``to_skip``: ``make_sample(decoded,
    position)``, a corrupt sample's position getting a stand-in (see the module docstring).
    ``decode`` raises ``CorruptSample`` for a sample it cannot decode."""
    history: deque[RawSample | Decoded | None] = deque(maxlen=LOOK_BACK)  # None: known corrupt
    waiting: list[int] = []  # corrupt positions with no stand-in behind them yet
    for position, raw in enumerate(raws):
        if position < to_skip:
            history.append(raw)
            continue
        started = time.perf_counter()
        decoded = _decode_counted(raw, decode, counters, max_corrupt_fraction)
        ready = []
        if decoded is None:
            stand_in = _stand_in(history, decode)
            if stand_in is None:
                waiting.append(position)
            else:
                ready.append(make_sample(stand_in, position))
        else:
            ready += [make_sample(decoded, earlier) for earlier in waiting]
            waiting.clear()
            ready.append(make_sample(decoded, position))
        history.append(decoded)
        counters.add("decode_s", time.perf_counter() - started)
        counters.tick()
        yield from ready


def _stand_in(history: deque, decode: Callable[[RawSample], Decoded]) -> Decoded | None:
    """The newest decodable sample in ``history`` (decoding skipped ones, uncounted)."""
    for back in range(len(history) - 1, -1, -1):
        entry = history[back]
        if isinstance(entry, RawSample):
            try:
                entry = history[back] = decode(entry)
            except CorruptSample:
                entry = history[back] = None
        if entry is not None:
            return entry
    return None


def _decode_counted(raw: RawSample, decode: Callable[[RawSample], Decoded], counters: UnitCounters,
                    max_corrupt_fraction: float) -> Decoded | None:
    counters.add("seen")
    try:
        return decode(raw)
    except CorruptSample as err:
        counters.add("corrupt")
        counters.last_failure = f"sample {raw.key!r} in shard {raw.shard}: {err}"
        counters.flush()
        warnings.warn(f"skipping corrupt sample {raw.key!r} in shard {raw.shard}: {err}", stacklevel=2)
        check_corrupt_fraction(counters, max_corrupt_fraction, end_of_pass=False)
        return None
