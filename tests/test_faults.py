"""Faults of long-lived runs (issue 23): a locked --out, --resume auto across
interruptions, a full disk, empty shards, read-only outputs, odd images, poisoned
checkpoints and absurd settings. Each test fails without its fix.

Real processes where the fault is about processes (a live run beside a second one, a
signal, a killed worker), real shards from data/, real servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convssl.cli import main
from convssl.errors import ConvsslError
from convssl.run_lock import LOCK_NAME, RunInUse, RunLock
from convssl import checkpoint as ckpt_io
from test_reliability import ENV, FMNIST, RECIPES, convssl_cli, one_line_error, tiny_recipe

UNLABELED = FMNIST / "unlabeled"


def pretrain_argv(out: Path, *extra, steps: int = 40) -> list[str]:
    """A real ``convssl pretrain`` command line: a small convnet at 16 px, milliseconds a step."""
    return ["pretrain", "--recipe", str(RECIPES / "rotation_resnet18_small.yaml"), "--data", str(UNLABELED),
            "--out", str(out), "--max-steps", str(steps), "--quiet", "--device", "cpu",
            "--set", "encoder.spec=custom_nets:small_convnet", "--set", "encoder.small_input=false",
            "--set", "data.size=16", "--set", "data.batch_size=8", "--set", "train.ckpt_every=0",
            "--set", "train.log_every=1", "--set", "train.channels_last=false", "--set", "optim.warmup_epochs=0",
            *extra]


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "convssl", *argv], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until_training(proc: subprocess.Popen, run: Path, timeout: float = 120) -> None:
    """Until the run has logged a step (it holds its lock and trains)."""
    deadline = time.time() + timeout
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text()):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "the run never logged a step"
        time.sleep(0.02)


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def hold_lock_elsewhere(out: Path) -> subprocess.Popen:
    """Another process holding ``out``'s run lock (the caller kills it), returned once it holds it."""
    code = ("import sys, time; from convssl.run_lock import RunLock; "
            "l = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["task"].keys() == b["task"].keys()
    for k, v in a["task"].items():
        assert torch.equal(v, b["task"][k]), k  # BatchNorm statistics and counters included
    for i, state in a["optimizer"]["state"].items():
        for name, v in state.items():
            assert torch.equal(v, b["optimizer"]["state"][i][name]), (i, name)


# ---- A: a lock on --out -------------------------------------------------------------------

def test_a_second_run_or_a_resume_beside_a_live_run_fails_at_once_naming_its_pid(tmp_path, capsys):
    run = tmp_path / "run"
    live = start(pretrain_argv(run, steps=100000))
    try:
        wait_until_training(live, run)
        for extra in ((), ("--resume",), ("--resume", "auto")):
            capsys.readouterr()
            started = time.perf_counter()
            assert main(pretrain_argv(run, *extra)) == 2, extra  # this test's process: another one than the run's
            seconds = time.perf_counter() - started
            line = one_line_error(capsys.readouterr().err)
            assert f"is in use by a running convssl run (pid {live.pid} on host {socket.gethostname()}" in line, line
            assert "wait for it to end" in line and "choose another --out" in line, line
            assert seconds < 30, seconds  # before any model or loader is built
        assert live.poll() is None, "the live run was disturbed"
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in lines] == list(range(1, len(lines) + 1))  # one writer, no interleaving
    finally:
        code, err = stop(live)
    assert code == 2 and "interrupted at step" in err, err[-2000:]
    assert not (run / LOCK_NAME).exists()  # released on a signal too


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_note(tmp_path, capsys):
    run = tmp_path / "run"
    killed = start(pretrain_argv(run, "--resume", "auto", "--set", "train.ckpt_every=1", steps=100000))
    wait_until_training(killed, run)
    killed.kill()  # kill -9: nothing of convssl runs, the lock file stays
    killed.communicate(timeout=60)
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == killed.pid
    capsys.readouterr()
    assert main(pretrain_argv(run, "--resume", "auto", "--set", "train.ckpt_every=1", "--stop-after", "1",
                              steps=100000)) == 0
    err = capsys.readouterr().err
    assert f"took over the stale lock of pid {killed.pid} on host {socket.gethostname()}" in err, err
    assert not (run / LOCK_NAME).exists()


def test_run_lock_semantics(tmp_path):
    """In one process: the lock file names its holder while held, and goes at release; a
    record of a process that is gone is taken over with one note; another process's live
    lock is refused (a child holds it)."""
    notes = []
    with RunLock(tmp_path / "out", note=notes.append) as lock:
        record = json.loads(lock.path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert not lock.path.exists() and notes == []
    lock.path.write_text(json.dumps({"pid": 999999999, "host": "elsewhere", "started": "then", "argv": ["x"]}))
    with RunLock(tmp_path / "out", note=notes.append):
        pass
    assert len(notes) == 1 and "took over the stale lock of pid 999999999 on host elsewhere, started then" in notes[0]

    holder = hold_lock_elsewhere(tmp_path / "out")
    try:
        with pytest.raises(RunInUse, match=f"pid {holder.pid} on host"):
            RunLock(tmp_path / "out", "--out").acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with RunLock(tmp_path / "out", note=notes.append):  # kill -9 dropped the kernel lock
        assert f"stale lock of pid {holder.pid}" in notes[-1]


# ---- B: --resume auto ----------------------------------------------------------------------

def test_resume_auto_one_command_line_interrupted_and_restarted_equals_the_uninterrupted_run(tmp_path, capsys):
    """The same command line, run until SIGTERM, then run again: it continues from the
    checkpoint and ends bit-exactly where the uninterrupted run does."""
    straight, _ = convssl_cli(*pretrain_argv(tmp_path / "straight"), timeout=300)  # one thread, as below
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = tmp_path / "run"
    argv = pretrain_argv(run, "--resume", "auto")
    first = start(argv)
    wait_until_training(first, run)
    code, err = stop(first, signal.SIGTERM)
    assert code == 2 and "interrupted at step" in err and "Traceback" not in err, err[-2000:]
    stopped = ckpt_io.load(run)["step"]
    assert 1 <= stopped < 40, stopped
    again, _ = convssl_cli(*argv, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "checkpoint: " in again.stdout and "step-00000040.pt" in again.stdout
    same_state(ckpt_io.load(tmp_path / "straight"), ckpt_io.load(run))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 40 and set(range(1, 41)) <= set(steps)
    capsys.readouterr()
    assert main(argv) == 0  # a finished run, requeued once more: nothing to do
    assert "done: 40 steps" in capsys.readouterr().out


def test_resume_modes_in_python(tmp_path):
    from convssl.train.trainer import pretrain

    fresh = pretrain(tiny_recipe(train={"max_steps": 2}), str(UNLABELED), tmp_path / "run", resume="auto",
                     progress=False)
    assert fresh["steps"] == 2 and ckpt_io.load(tmp_path / "run")["step"] == 2
    longer = tiny_recipe(train={"max_steps": 3})
    assert pretrain(longer, str(UNLABELED), tmp_path / "run", resume="auto", progress=False)["steps"] == 3
    with pytest.raises(ConvsslError, match="already holds checkpoints; pass --resume .*--resume auto"):
        pretrain(longer, str(UNLABELED), tmp_path / "run", progress=False)
    with pytest.raises(ConvsslError, match="no checkpoint in .*--resume auto"):
        pretrain(longer, str(UNLABELED), tmp_path / "other", resume=True, progress=False)
    with pytest.raises(ConvsslError, match="resume must be False, True or 'auto'"):
        pretrain(longer, str(UNLABELED), tmp_path / "other", resume="yes", progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*argv, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(_free_port()), "-m", "convssl", *argv], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_resume_auto_under_torchrun_all_ranks_take_rank_0s_decision(tmp_path):
    """Two gloo ranks: the first launch starts (no checkpoint), the second continues
    the checkpoint on both ranks (a rank starting afresh would log step 1 again or hang in
    a collective); no rank prints torch's broadcast_buffers FutureWarning."""
    run = tmp_path / "run"
    argv = pretrain_argv(run, "--resume", "auto", steps=6)
    first = torchrun(*argv, "--stop-after", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert ckpt_io.load(run)["step"] == 3
    second = torchrun(*argv)
    assert second.returncode == 0, second.stderr[-3000:]
    ckpt = ckpt_io.load(run)
    assert ckpt["step"] == 6 and ckpt["data"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    for done in (first, second):
        assert "FutureWarning" not in done.stderr and "broadcast_buffers" not in done.stderr, done.stderr[-3000:]
        assert "re-seeded" not in done.stderr  # the same world size: the exact continuation


# ---- C: shards that cannot be read ---------------------------------------------------------

@pytest.fixture()
def first_shard_empty(tmp_path) -> Path:
    """A labeled shard folder (no manifest) whose first shard is a 0-byte file."""
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "shard-000000.tar").write_bytes(b"")
    (folder / "shard-000001.tar").write_bytes((FMNIST / "train" / "shard-000000.tar").read_bytes())
    return folder


def test_an_empty_first_shard_is_one_line_for_probe_finetune_and_embed(first_shard_empty, tmp_path, capsys):
    from convssl.train.trainer import pretrain

    ckpt = pretrain(tiny_recipe(train={"max_steps": 1}), str(UNLABELED), tmp_path / "run", progress=False)["checkpoint"]
    trust = ["--trust-encoder", "custom_nets:small_convnet"]
    commands = {
        "probe": ["probe", "--ckpt", ckpt, *trust, "--train", first_shard_empty, "--val", FMNIST / "test",
                  "--out", tmp_path / "probe"],
        "finetune": ["finetune", "--ckpt", ckpt, *trust, "--train", first_shard_empty, "--val", FMNIST / "test",
                     "--out", tmp_path / "finetune", "--max-steps", "1"],
        "embed": ["embed", "--ckpt", ckpt, *trust, "--data", first_shard_empty, "--out", tmp_path / "embed",
                  "--method", "pca"],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        assert main([str(a) for a in argv]) == 2, name
        line = one_line_error(capsys.readouterr().err)
        assert "shard-000000.tar" in line and "ReadError: empty file" in line, (name, line)
        assert "Traceback" not in line


def test_a_frozen_http_server_is_reported_at_its_first_timeout(tmp_path):
    """A server that accepts and never answers: each silent timeout is said at once
    (retry i of n, no data for T s), and the error follows its retries, in seconds."""
    import threading

    from convssl.data.shard_dataset import ShardDataset
    from convssl.errors import DataError

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    held, stopping = [], threading.Event()

    def accept_and_say_nothing():
        while not stopping.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/shard-000000.tar"
    started = time.perf_counter()
    try:
        with pytest.warns(UserWarning, match=r"shard-000000\.tar: .*timed out \(no data for 0\.5 s: the server "
                                             r"accepted the connection but did not answer\); retry 1 of 2 in 0\.05 s"):
            with pytest.raises(DataError, match=r"giving up|corrupt or unreadable"):
                list(ShardDataset([url], timeout=0.5, retries=2, retry_delay=0.05))
    finally:
        stopping.set()
        thread.join(timeout=10)
        for conn in held:
            conn.close()
        server.close()
    assert time.perf_counter() - started < 20


def test_finetune_out_is_locked_too(tmp_path, capsys):
    holder = hold_lock_elsewhere(tmp_path / "ft")
    try:
        argv = ["finetune", "--ckpt", tmp_path / "no-such.pt", "--train", FMNIST / "train", "--val", FMNIST / "test",
                "--out", tmp_path / "ft", "--max-steps", "1"]
        assert main([str(a) for a in argv]) == 2
        assert f"is in use by a running convssl run (pid {holder.pid}" in one_line_error(capsys.readouterr().err)
    finally:
        holder.kill()
        holder.wait(timeout=30)


# ---- C: a full disk -------------------------------------------------------------------------

def _small_disk_shell(mountpoint: Path, size: str, command: list[str]) -> list[str]:
    """``command`` run with a real ``size`` tmpfs at ``mountpoint``, in a private user and
    mount namespace (no root needed, nothing left mounted); skips where namespaces are off."""
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mountpoint}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs in a user namespace here: {probe.stderr.strip()}")
    import shlex

    return ["unshare", "-Urm", "sh", "-c",
            f"mount -t tmpfs -o size={size} tmpfs {mountpoint} && exec {shlex.join(command)}"]


def test_a_full_disk_while_checkpointing_is_one_line_and_the_last_checkpoint_survives(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    run = disk / "run"
    argv = [sys.executable, "-m", "convssl", *pretrain_argv(run, "--set", "train.ckpt_every=1", "--set",
                                                          "train.keep_checkpoints=100", steps=30),
            "--set", "train.log_every=100"]
    # 2 MiB holds three checkpoints of this model (590 KB each) and the logs
    done = subprocess.run(_small_disk_shell(disk, "2m", argv), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line_error(done.stderr)
    assert "the checkpoint of step 4 was not saved: cannot write" in line and "step-00000004.pt" in line, line
    assert "no space left on device (0 bytes free on its file system)" in line, line
    assert "step-00000003.pt, is intact: continue from it with --resume" in line, line


def test_an_export_past_the_file_size_limit_is_one_line_naming_the_file(tmp_path):
    """RLIMIT_FSIZE makes the write fail for real (EFBIG, SIGXFSZ ignored as batch systems
    do); torch reports it without an errno. Nothing half written is left."""
    import resource

    from convssl.train.trainer import pretrain

    ckpt = pretrain(tiny_recipe(train={"max_steps": 1}), str(UNLABELED), tmp_path / "run", progress=False)["checkpoint"]
    out = tmp_path / "export"
    out.mkdir()
    (out / "backbone.pth").write_bytes(b"the previous export")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))

    done = subprocess.run([sys.executable, "-m", "convssl", "export", "--ckpt", ckpt, "--out", out / "backbone.pth",
                           "--trust-encoder", "custom_nets:small_convnet"], env=ENV, capture_output=True, text=True,
                          timeout=120, preexec_fn=limit_file_size)
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line_error(done.stderr)
    assert f"cannot write {str(out / 'backbone.pth')!r}: file too large (the file size limit, ulimit -f, is 16.0 KiB)" \
           in line, line
    assert "the previous file is intact" in line
    assert (out / "backbone.pth").read_bytes() == b"the previous export"
    assert [p.name for p in out.iterdir()] == ["backbone.pth"]  # no temp left behind


# ---- C: a checkpoint holding a NaN -----------------------------------------------------------

def test_a_checkpoint_with_one_nan_weight_is_refused_by_probe_finetune_embed_and_resume(tmp_path, capsys):
    from convssl.train.trainer import pretrain

    recipe = tiny_recipe(train={"max_steps": 2, "ckpt_every": 1, "keep_checkpoints": 5})
    pretrain(recipe, str(UNLABELED), tmp_path / "run", progress=False)
    path = ckpt_io.latest(tmp_path / "run" / "checkpoints")
    ckpt = torch.load(path, weights_only=True)
    ckpt["encoder"]["0.weight"].view(-1)[3] = float("nan")  # one weight, as a diverging step leaves it
    ckpt["task"]["encoder.model.0.weight"].view(-1)[3] = float("nan")
    torch.save(ckpt, path)

    trust = ["--trust-encoder", "custom_nets:small_convnet"]
    commands = {
        "probe": ["probe", "--ckpt", path, *trust, "--train", FMNIST / "train", "--val", FMNIST / "test",
                  "--out", tmp_path / "probe"],
        "finetune": ["finetune", "--ckpt", path, *trust, "--train", FMNIST / "train", "--val", FMNIST / "test",
                     "--out", tmp_path / "finetune", "--max-steps", "1"],
        "embed": ["embed", "--ckpt", path, *trust, "--data", FMNIST / "test", "--out", tmp_path / "embed",
                  "--method", "pca"],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        assert main([str(a) for a in argv]) == 2, name
        line = one_line_error(capsys.readouterr().err)
        assert f"checkpoint {str(path)!r} holds NaN or infinite weights in 1 tensor(s) (0.weight)" in line, (name, line)
        assert "use an earlier checkpoint" in line
    assert not (tmp_path / "probe" / "probe.json").exists()

    longer = tiny_recipe(train={"max_steps": 4, "ckpt_every": 1, "keep_checkpoints": 5,
                                "log_every": 1})
    with pytest.raises(ConvsslError, match=r"holds NaN or infinite values in 1 tensor\(s\) \(encoder.model.0.weight\);"
                                           r" it cannot be continued: delete it to resume from the one before "
                                           r"\(.*step-00000001.pt\)") as caught:
        pretrain(longer, str(UNLABELED), tmp_path / "run", resume=True, progress=False)
    assert "last good" not in str(caught.value)
    assert not (tmp_path / "run" / "checkpoints" / "step-00000003.pt").exists()  # refused before any step


def test_stop_after_zero_is_an_error_not_a_run_without_checkpoint(tmp_path, capsys):
    assert main(pretrain_argv(tmp_path / "run", "--stop-after", "0")) == 2
    assert "--stop-after must be at least 1" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


# ---- C: convssl shards into a folder it cannot write ------------------------------------------

@pytest.fixture()
def image_folder(tmp_path) -> Path:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (80 * i, 40, 0)).save(folder / f"{i}.png")
    return folder


def test_shards_into_an_unwritable_out_is_one_line(image_folder, tmp_path, capsys):
    """Root writes through chmod, so the refusals are ones the kernel makes for root too:
    OUT under a regular file, and a folder in /sys."""
    from test_reliability import _unwritable_folder

    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for out, message in ((a_file / "shards", "is a file, not a folder"),
                         (_unwritable_folder(tmp_path), "is not writable")):
        capsys.readouterr()
        assert main(["shards", str(image_folder), str(out)]) == 2, out
        assert message in one_line_error(capsys.readouterr().err)


def test_shards_onto_a_read_only_mount_is_one_line(image_folder, tmp_path):
    """A real read-only file system: a read-only bind mount in a private namespace."""
    target = tmp_path / "ro"
    target.mkdir()
    command = [sys.executable, "-m", "convssl", "shards", str(image_folder), str(target / "shards")]
    mount = f"mount --bind {target} {target} && mount -o remount,ro,bind {target}"
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", mount], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no read-only bind mount in a user namespace here: {probe.stderr.strip()}")
    import shlex

    done = subprocess.run(["unshare", "-Urm", "sh", "-c", f"{mount} && exec {shlex.join(command)}"], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "is not writable (Read-only file system)" in one_line_error(done.stderr)


def test_shards_reencode_png_keeps_cmyk_jpegs_as_rgb(tmp_path):
    """Print-shop JPEGs are CMYK; PNG cannot hold CMYK, so they were dropped as unreadable."""
    import io

    import numpy as np
    from PIL import Image

    from convssl.data.shard_dataset import ShardDataset
    from convssl.data.sources import open_source
    from convssl.data.writer import write_shards

    folder = tmp_path / "images"
    folder.mkdir()
    cmyk = Image.new("CMYK", (24, 16), (0, 255, 255, 0))  # pure red in ink
    cmyk.save(folder / "print.jpg", quality=95)
    Image.new("RGB", (24, 16), (0, 0, 255)).save(folder / "screen.jpg")
    assert Image.open(folder / "print.jpg").mode == "CMYK"
    manifest = write_shards(open_source(str(folder)), tmp_path / "shards", reencode="png")
    assert manifest.count == 2 and manifest.skipped == 0, manifest.skipped_files
    assert manifest.channels == 3 and "CMYK" not in manifest.modes
    samples = {s["key"]: s["img"] for s in ShardDataset(str(tmp_path / "shards"))}
    red = samples[next(k for k in samples if "print" in k)]
    want = np.array(Image.open(folder / "print.jpg").convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(red, torch.from_numpy(want))  # PNG is lossless: exactly Pillow's CMYK -> RGB
    assert red[0].float().mean() > 200 and red[1:].float().mean() < 60


# ---- C: a loader worker killed mid-run ----------------------------------------------------------

def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_a_killed_loader_worker_ends_the_run_with_a_checkpoint_that_resumes_exactly(tmp_path):
    straight, _ = convssl_cli(*pretrain_argv(tmp_path / "straight", "--set", "data.workers=2", steps=120), timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = tmp_path / "run"
    proc = start(pretrain_argv(run, "--set", "data.workers=2", steps=120))
    wait_until_training(proc, run)
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers  # the two loader workers
    os.kill(workers[0], signal.SIGKILL)  # as the out-of-memory killer does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-3000:]
    line = one_line_error(err)
    assert f"DataLoader worker (pid(s) {workers[0]}) exited unexpectedly at step" in line, line
    assert "checkpoint saved to" in line and "continue with --resume" in line, line
    stopped = ckpt_io.load(run)["step"]
    if stopped == 120:  # 8 batches are prefetched: a kill in the last 8 steps may go unnoticed
        pytest.skip("the run ended before the worker's death was noticed")
    resumed, _ = convssl_cli(*pretrain_argv(run, "--set", "data.workers=2", "--resume", steps=120), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    same_state(ckpt_io.load(tmp_path / "straight"), ckpt_io.load(run))


# ---- C: absurd sizes -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--size", "-5"], "--size and --in-chans must be at least 1, got -5 and 3"),
    (["--size", "0"], "--size and --in-chans must be at least 1, got 0 and 3"),  # was taken as "default 224"
    (["--in-chans", "0"], "--size and --in-chans must be at least 1, got 224 and 0"),
    (["--size", "1000000"], "a batch of 1 x 3 x 1000000 x 1000000 input is 11,175.9 GiB in float32 before any layer "
                            "runs"),  # more than any machine has
])
def test_info_with_an_impossible_size_is_one_line(argv, message, capsys):
    assert main(["info", "torchvision:resnet18", *argv]) == 2
    assert message in one_line_error(capsys.readouterr().err)


def test_pretrain_with_an_absurd_image_size_stops_before_reading_data(tmp_path, capsys):
    started = time.perf_counter()
    assert main(pretrain_argv(tmp_path / "run", "--set", "data.size=1000000")) == 2  # 100000 failed too
    line = one_line_error(capsys.readouterr().err)
    assert "a batch of 8 x 1 x 1000000 x 1000000 input is 29,802.3 GiB in float32" in line, line
    assert "lower data.size or data.batch_size" in line
    assert time.perf_counter() - started < 20  # it took 97 s of decoding, then an allocation traceback


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_on_every_rank_and_resume_auto_continues(tmp_path):
    """SIGTERM to torchrun itself (not to the ranks): torchrun forwards it, the ranks save
    at one step, and the same command continues. torchrun's own exit (1, with its
    SignalException traceback) is torchrun's report of the signal, documented in the README."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
            str(_free_port()), "-m", "convssl", *pretrain_argv(run, "--resume", "auto", steps=100000)]
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_training(proc, run)
    code, err = stop(proc, signal.SIGTERM)
    assert code != 0 and "interrupted at step" in err, err[-3000:]
    assert "SignalException" in err  # torchrun's, as the README says
    stopped = ckpt_io.load(run)
    assert stopped["data"]["world_size"] == 2 and len(stopped["rng"]) == 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, stopped["step"] + 1))
    again = subprocess.run(argv[:6] + [str(_free_port())] + argv[7:] + ["--stop-after", "2"], env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert ckpt_io.load(run)["step"] == stopped["step"] + 2
