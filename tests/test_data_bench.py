"""`convssl bench data` runs end to end on a tiny ImageFolder tree and prints its table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convssl.cli import main


def test_bench_data_prints_a_row_per_worker_count(tmp_path: Path, capsys):
    rng = np.random.default_rng(0)
    for i in range(16):
        (tmp_path / "tree" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "tree" / f"c{i % 2}" / f"{i}.jpg")
    assert main(["bench", "data", "--images", str(tmp_path / "tree"), "--size", "16", "--workers", "0",
                 "--batch", "4", "--epochs", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 0 |"))
    cells = row.strip().strip("|").split("|")
    rates = [float(cell.split()[0]) for cell in cells[1:4]]  # local shards, HTTP shards, ImageFolder
    per_worker = [float(cell.split()[1].strip("()")) for cell in cells[1:4]]
    assert per_worker == rates  # 0 workers: the main process is the one reader
    # the last column is shards over ImageFolder (not its inverse), from the rates shown
    assert float(cells[4]) == pytest.approx(rates[0] / rates[2], rel=0.05)
