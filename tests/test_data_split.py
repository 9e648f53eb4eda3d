"""Fewer shards than (rank x worker) units, under 2 real torchrun ranks (gloo) x 2 workers:
each sample is read once per epoch, units stay balanced, and no unit reads every shard."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from convssl.data.manifest import Manifest, ShardInfo

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "dist_scripts" / "read_shards.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "ssl"), "OMP_NUM_THREADS": "1"}


def _shards(folder: Path, counts: list[int]) -> None:
    folder.mkdir(parents=True)
    infos = []
    for s, count in enumerate(counts):
        path = folder / f"shard-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(count):
                buffer = io.BytesIO()
                Image.fromarray(np.full((4, 4), (s * 50 + i) % 256, dtype=np.uint8), "L").save(buffer, format="PNG")
                info = tarfile.TarInfo(f"s{s}-{i:03d}.png")
                info.size = len(buffer.getvalue())
                tar.addfile(info, io.BytesIO(buffer.getvalue()))
        infos.append(ShardInfo(path.name, count, path.stat().st_size))
    Manifest(shards=tuple(infos), labeled=False).write(folder)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(out: Path, *specs: str) -> dict[str, list[dict]]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
               "127.0.0.1", "--master-port", str(_free_port()), str(SCRIPT), str(out), *specs]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_fewer_shards_than_units_two_ranks_two_workers(tmp_path: Path):
    _shards(tmp_path / "shards", [15, 13])  # 2 shards, 28 samples, 4 units
    every = sorted([f"s0-{i:03d}" for i in range(15)] + [f"s1-{i:03d}" for i in range(13)])
    # With the manifest (contiguous ranges) and without it (a brace pattern: interleaved parts).
    specs = [str(tmp_path / "shards"), str(tmp_path / "shards" / "shard-{000000..000001}.tar")]
    with_counts, without = _torchrun(tmp_path / "out.json", *specs).values()
    for ranks in (with_counts, without):
        for epoch in ("0", "1"):
            keys = [key for rank in ranks for key in rank["keys"][epoch]]
            assert sorted(keys) == every  # each sample exactly once per epoch over all units
            # The old split had every unit read every shard: 4 x 28 reads per epoch.
            assert sum(rank["read"][epoch] for rank in ranks) <= 28 + 2 * 15
        assert ranks[0]["keys"]["0"] != ranks[0]["keys"]["1"]  # reshuffled per epoch
    for rank in with_counts:  # ranges of 7 samples: each rank yields 14 a epoch
        assert all(len(rank["keys"][epoch]) == 14 for epoch in ("0", "1"))
