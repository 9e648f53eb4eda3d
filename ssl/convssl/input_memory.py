"""Refuse an input no machine here could hold, before anything is built or read.

A typo such as ``data.size=100000`` otherwise decodes and resizes images for minutes and
ends in an allocation traceback from deep inside torch. The check is a lower bound, so
it never refuses a run that could fit: one batch of input in float32 (what the first
layer reads; activations are larger still) against the device's whole memory.
"""

from __future__ import annotations

import os

import torch

from convssl.errors import ConfigError


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory on ``device`` (a GPU's total, or this machine's RAM); None if unknown."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on every platform
        return None


def check_input_fits(batch: int, channels: int, size: int, device: torch.device, *, names: str) -> None:
    """``ConfigError`` when ``batch`` x ``channels`` x ``size`` x ``size`` float32 values
    alone exceed the memory of ``device``; ``names`` says which settings to lower."""
    needed = batch * channels * size * size * 4
    available = device_memory(device)
    if available is not None and needed > available:
        raise ConfigError(
            f"a batch of {batch} x {channels} x {size} x {size} input is {_gib(needed)} in float32 before any "
            f"layer runs, more than the {_gib(available)} of {'this GPU' if device.type == 'cuda' else 'this machine'}"
            f"; lower {names} (images are usually 32 to 512 px)")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
