"""Per-image correctness vectors, stored compactly in reports so that later comparisons
(``convssl compare --baseline``) can pair two evaluations image by image.

A vector is one bit per held-out image in reading order: ``numpy.packbits`` (big-endian
bit order, zero-padded to a byte) then base64, 1,668 characters for 10,000 images. The
held-out set is identified by its size and the sha256 of its label sequence: two
reports pair only when both agree (same images, same order, as far as labels can tell).
"""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import torch

from convssl.errors import ConvsslError

ENCODING = "base64(numpy.packbits(correct, bitorder='big')), one bit per held-out image in reading order"


def pack_bits(correct_N: torch.Tensor) -> str:
    """A bool vector as base64 text."""
    bits = np.packbits(correct_N.detach().cpu().numpy().astype(bool), bitorder="big")
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_bits(text: str, n: int) -> torch.Tensor:
    """The bool vector of ``n`` images that ``pack_bits`` wrote."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii")), dtype=np.uint8)
    if len(raw) != (n + 7) // 8:
        raise ConvsslError(f"a stored correctness vector holds {8 * len(raw)} bits, not the {n} images of its report")
    return torch.from_numpy(np.unpackbits(raw, bitorder="big")[:n].astype(bool))


def labels_fingerprint(labels_N: torch.Tensor) -> str:
    """sha256 of the held-out label sequence (int64, little-endian)."""
    return hashlib.sha256(labels_N.detach().cpu().to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()
