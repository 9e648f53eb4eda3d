"""RNG state capture/restore, so a resumed run draws the same random numbers.

The state is tensors, ints, floats and tuples only (numpy's generator state is stored
as a tensor, not as a pickled array), so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": random.getstate()}
    if torch.cuda.is_available():  # this process's GPU only: a resume may see another number of GPUs
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def all_ranks_rng_state(info) -> dict | list[dict]:
    """This process's ``rng_state()``, or every rank's (a list) when distributed: what a
    checkpoint stores so each rank resumes its own random streams."""
    state = rng_state()
    if not info.enabled:
        return state
    import torch.distributed as tdist

    gathered = [None] * info.world_size
    tdist.all_gather_object(gathered, state)
    return gathered


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # older checkpoints held every visible GPU's state
            here = torch.cuda.current_device()
            cuda = cuda[here] if here < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
