"""Shards from anywhere: a real HTTP server on 127.0.0.1, ``pipe:cat``, dead and vanishing
URLs, retries; plus the reader's statistics, resume after corrupt samples and one-line
worker errors. Every shard here is a real tar of real PNG images."""

from __future__ import annotations

import http.server
import io
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convssl.views.crops import RandomResizedCrop
from convssl.data.manifest import Manifest, ShardInfo
from convssl.data.loader import make_loader
from convssl.data.read_error import ShardReadError
from convssl.data.shard_dataset import ShardDataset
from convssl.data.sources import open_source
from convssl.data.urls import resolve_shards
from convssl.views.crop_views import Named
from convssl.data.writer import write_shards
from convssl.errors import DataError

FAST = {"retries": 2, "retry_delay": 0.01, "timeout": 5.0}  # bounded, fast back-off for tests


# -- a real HTTP server with fault injection ----------------------------------------------

@dataclass
class Faults:
    """Per URL path: answer 503 to the first ``fail_first`` requests; send only the first
    ``cut`` bytes of the body (then close) on every request; 404 for ``gone``."""

    fail_first: dict[str, int] = field(default_factory=dict)
    cut: dict[str, int] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    requests: Counter = field(default_factory=Counter)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, faults: Faults, **kwargs):
        self.faults = faults
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 (http.server's name)
        faults, path = self.faults, self.path
        faults.requests[path] += 1
        if path in faults.gone:
            self.send_error(404, "gone")
            return
        if faults.fail_first.get(path, 0) > 0:
            faults.fail_first[path] -= 1
            self.send_error(503, "try again")
            return
        if path in faults.cut:
            data = (Path(self.directory) / path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: faults.cut[path]])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def serve(tmp_path: Path):
    """``serve(folder) -> (base_url, faults)``: an HTTP server on 127.0.0.1, port 0."""
    servers = []

    def start(folder: Path):
        faults = Faults()
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                 partial(_Handler, faults=faults, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", faults

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# -- shards ---------------------------------------------------------------------------------

def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def _labeled_shards(tmp_path: Path, count: int = 24, maxcount: int = 8) -> Path:
    tree = tmp_path / "src"
    for i in range(count):
        (tree / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        (tree / f"c{i % 3}" / f"{i:03d}.png").write_bytes(_png(i))
    write_shards(open_source(str(tree), labeled=True), tmp_path / "shards", maxcount=maxcount)
    return tmp_path / "shards"


def _tar_shards(folder: Path, shards: list[list[bytes]]) -> list[str]:
    """Shards of PNG samples ``s<shard>-<index>`` (bytes given, good or garbage) and a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    infos = []
    for s, samples in enumerate(shards):
        path = folder / f"shard-{s:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for i, data in enumerate(samples):
                info = tarfile.TarInfo(f"s{s}-{i:03d}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        infos.append(ShardInfo(path.name, len(samples), path.stat().st_size))
    Manifest(shards=tuple(infos), labeled=False, channels=1).write(folder)
    return [str(folder / info.name) for info in infos]


def _as_list(dataset: ShardDataset) -> list[tuple[str, bytes, int | None]]:
    return [(s["key"], s["img"].numpy().tobytes(), s.get("cls")) for s in dataset]


# -- shards from anywhere -----------------------------------------------------------------------

def test_http_shards_read_exactly_like_local_files(tmp_path: Path, serve):
    shards = _labeled_shards(tmp_path)
    base, faults = serve(shards)
    local = _as_list(ShardDataset(str(shards), labeled=True, shuffle_buffer=6, seed=2))
    assert len(local) == 24
    via_manifest = ShardDataset(f"{base}/manifest.json", labeled=True, shuffle_buffer=6, seed=2, **FAST)
    assert via_manifest.urls == [f"{base}/shard-{i:06d}.tar" for i in range(3)]
    assert via_manifest.manifest.count == 24
    assert _as_list(via_manifest) == local
    pattern = ShardDataset(f"{base}/shard-{{000000..000002}}.tar", labeled=True, shuffle_buffer=6, seed=2, **FAST)
    assert pattern.manifest is None and _as_list(pattern) == local
    assert faults.requests["/shard-000000.tar"] == 2


def test_pipe_cat_reads_exactly_like_local_files(tmp_path: Path):
    shards = _labeled_shards(tmp_path)
    local = _as_list(ShardDataset(str(shards), labeled=True))
    piped = ShardDataset([f"pipe:cat {shards}/shard-{i:06d}.tar" for i in range(3)], labeled=True, **FAST)
    assert _as_list(piped) == local
    urls, manifest = resolve_shards(f"pipe:cat {shards}/manifest.json")
    assert urls == [f"pipe:cat {shards}/shard-{i:06d}.tar" for i in range(3)] and manifest.count == 24
    joined, _ = resolve_shards(f"pipe:cat {shards}/shard-{{000000..000001}}.tar::{shards}/shard-000002.tar")
    assert _as_list(ShardDataset(joined, labeled=True)) == local


def test_dead_url_fails_clearly_after_its_retries(tmp_path: Path, serve):
    shards = _labeled_shards(tmp_path)
    base, faults = serve(shards)
    faults.gone.add("/shard-000001.tar")
    dataset = ShardDataset([f"{base}/shard-000001.tar"], **FAST)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"shard-000001\.tar.*HTTP Error 404") as caught:
            list(dataset)
    assert "\n" not in str(caught.value)
    assert faults.requests["/shard-000001.tar"] == 1 + FAST["retries"]  # tried, then retried twice
    assert time.perf_counter() - started < 10  # back-off 0.01 + 0.02 s (the default would wait 1 + 2 s)
    assert (dataset.stats.retries, dataset.stats.failed_shards) == (2, 1)
    # No server at all: connection refused, same clear error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"127\.0\.0\.1:9/x\.tar.*(refused|URLError)"):
            list(ShardDataset(["http://127.0.0.1:9/x.tar"], **FAST))


def test_flaky_server_is_retried_and_resumed_mid_shard(tmp_path: Path, serve):
    shards = _labeled_shards(tmp_path)
    base, faults = serve(shards)
    local = _as_list(ShardDataset(str(shards), labeled=True))
    faults.fail_first["/shard-000000.tar"] = 1  # 503 once
    size = (shards / "shard-000002.tar").stat().st_size
    faults.cut["/shard-000002.tar"] = size // 2  # breaks off mid-shard ...
    remote = ShardDataset(f"{base}/manifest.json", labeled=True, **FAST)
    got = []
    for sample in remote:
        got.append((sample["key"], sample["img"].numpy().tobytes(), sample["cls"]))
        if len(got) == 20:  # ... and heals once half of it was read
            faults.cut.clear()
    assert got == local  # each sample once, in order: the retry continued after sample 19
    assert remote.stats.retries == 2 and remote.stats.failed_shards == 0


def test_shard_vanishing_mid_epoch_is_skipped_and_counted(tmp_path: Path, serve):
    urls = _tar_shards(tmp_path / "shards", [[_png(s * 100 + i) for i in range(30)] for s in range(3)])
    base, faults = serve(tmp_path / "shards")
    faults.cut["/shard-000001.tar"] = (Path(urls[1]).stat().st_size * 2) // 5  # dies at ~40%, every time
    generous = ShardDataset(f"{base}/manifest.json", max_corrupt_fraction=0.5, **FAST)
    with pytest.warns(UserWarning, match=r"giving up on shard .*shard-000001\.tar after 3 tries"):
        keys = [s["key"] for s in generous]
    lost = 30 - sum(k.startswith("s1-") for k in keys)
    assert 0 < lost < 30 and len(keys) == 90 - lost  # the rest of shard 1 is skipped, shard 2 still read
    assert [k for k in keys if k.startswith("s2-")] == [f"s2-{i:03d}" for i in range(30)]
    stats = generous.stats
    assert (stats.failed_shards, stats.corrupt, stats.seen) == (1, lost, 90)
    strict = ShardDataset(f"{base}/manifest.json", max_corrupt_fraction=0.01, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"more than max_corrupt_fraction=0\.01 \(last: .*shard-000001\.tar"):
            list(strict)


# -- statistics, resume, worker errors ----------------------------------------------------------

def _corrupt_shards(tmp_path: Path) -> list[str]:
    """4 shards x 10 samples; 3 garbage samples, all in the first half of each shard's order."""
    bad = {(0, 1), (1, 2), (3, 0)}
    return _tar_shards(tmp_path / "shards", [[b"not a png" if (s, i) in bad else _png(s * 10 + i)
                                              for i in range(10)] for s in range(4)])


def test_worker_counters_reach_the_main_process(tmp_path: Path):
    urls = _corrupt_shards(tmp_path)
    dataset = ShardDataset(urls, max_corrupt_fraction=0.2)
    assert dataset.stats.seen == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keys = [k for batch in make_loader(dataset, 5, num_workers=2) for k in batch["key"]]
    assert len(keys) == 40  # one sample per position: 37 images and 3 stand-ins
    stats = dataset.stats  # read in the main process; counted by the two workers
    assert (stats.read, stats.seen, stats.corrupt, stats.failed_shards) == (40, 40, 3, 0)
    assert stats.read_s > 0 and stats.decode_s > 0


@pytest.mark.parametrize("start_batches", [5, 8, 16])  # 16: the skip spans a whole epoch
def test_resume_after_corrupt_samples_continues_the_exact_stream(tmp_path: Path, start_batches: int):
    urls = _corrupt_shards(tmp_path)
    crop = Named(RandomResizedCrop(4, scale=(0.3, 1.0)))

    def batches(start: int, count: int) -> list[tuple]:
        dataset = ShardDataset(urls, transform=crop, shuffle_buffer=4, seed=5, infinite=True,
                               start_batches=start, batch_size=3, max_corrupt_fraction=0.2)
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for batch in make_loader(dataset, batch_size=3, num_workers=2, persistent_workers=False):
                out.append((tuple(batch["key"]), batch["img"].numpy().tobytes()))
                if len(out) == count:
                    return out

    uninterrupted = batches(0, start_batches + 10)  # 20 samples a worker and epoch (no manifest given)
    assert batches(start_batches, 10) == uninterrupted[start_batches:]


def test_worker_errors_reach_the_user_as_one_line(tmp_path: Path):
    urls = _tar_shards(tmp_path / "shards", [[b"junk"] * 60])
    batches = iter(make_loader(ShardDataset(urls), batch_size=4, num_workers=2))
    message = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            list(batches)
        except ShardReadError as err:  # not pytest.raises: its traceback would keep the workers alive
            message = str(err)
    del batches  # shuts the workers down (they ignore SIGTERM, so interpreter exit would wait)
    assert message is not None and "\n" not in message and "Traceback" not in message
    assert re.match(r"30 of 30 samples read were corrupt or unreadable \(100\.0%\)", message)
    assert "shard-000000.tar" in message


def test_unit_ranges_are_balanced_and_read_only_their_shards(tmp_path: Path):
    """2 shards, 4 units (one process, world_size 2 x 2 workers per rank): every sample
    once, each unit within one sample of the others, and far fewer reads than 4 x 30."""
    urls = _tar_shards(tmp_path / "shards", [[_png(s * 100 + i) for i in range(15)] for s in range(2)])
    keys, reads = [], 0
    for rank in (0, 1):
        dataset = ShardDataset(urls, shuffle_buffer=4, seed=1, rank=rank, world_size=2)
        for batch in make_loader(dataset, batch_size=2, num_workers=2, persistent_workers=False):
            keys += batch["key"]
        reads += dataset.stats.read
    assert sorted(keys) == sorted(f"s{s}-{i:03d}" for s in range(2) for i in range(15))
    assert reads <= 30 + 2 * 15  # the old split read 4 x 30: every unit read every shard


def _children() -> set[int]:
    pids = set()
    for task in Path("/proc/self/task").iterdir():
        pids |= {int(pid) for pid in (task / "children").read_text().split()}
    return pids


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_workers_ignore_a_group_sigterm_but_never_block_exit(tmp_path: Path):
    urls = _tar_shards(tmp_path / "shards", [[_png(i) for i in range(40)]])
    before = _children()
    batches = iter(make_loader(ShardDataset(urls, infinite=True), batch_size=4, num_workers=2))
    next(batches)
    workers = sorted(_children() - before)
    assert len(workers) == 2
    subprocess.run(["kill", "-TERM", str(workers[0])], check=True)  # as a scheduler would: not from the parent
    time.sleep(0.5)
    assert all(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
               for pid in workers)
    assert len(next(batches)["key"]) == 4 and len(next(batches)["key"]) == 4
    del batches
    # A loader kept alive by a reference cycle until interpreter exit: exit must not wait forever.
    script = ("import gc, sys; gc.disable()\n"
              "from convssl.data.loader import make_loader\nfrom convssl.data.shard_dataset import ShardDataset\n"
              f"it = iter(make_loader(ShardDataset({urls!r}, infinite=True), batch_size=4, num_workers=2))\n"
              "next(it); cycle = [it]; cycle.append(cycle)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "ssl")})
    assert done.returncode == 0, done.stderr[-2000:]  # (before the fix: waited forever, TimeoutExpired)
