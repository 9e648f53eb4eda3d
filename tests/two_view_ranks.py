"""Test helper: the two-view tasks' 2-rank runs (tests/dist_scripts/two_view_ddp.py under a
real torchrun, gloo) and the single-process reference of the same steps."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "dist_scripts" / "two_view_ddp.py"


def load_script():
    """The dist script as a module (its ``make_task``, ``train_two_steps``, ``tiny_convnet``)."""
    spec = importlib.util.spec_from_file_location("two_view_ddp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def two_ranks(out: Path, names: tuple[str, ...]) -> dict:
    """Each task's two steps under torchrun with 2 gloo ranks: {name: record}."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "ssl"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd + ["--nproc-per-node", "2", "--standalone", str(SCRIPT), str(out), *names],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out)


def one_process(name: str, bn_groups: int = 1) -> dict:
    """The same two steps in one process on the whole batch."""
    module = load_script()
    task = module.make_task(name, bn_groups=bn_groups)
    return module.train_two_steps(task, task, rank=0, world=1)
