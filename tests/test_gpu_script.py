"""``benchmarks/gpu.sh`` runs end to end on CPU at toy sizes, so it cannot rot between GPU loans."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "table.md"
    env = {**os.environ, "TINY": "1", "DEVICE": "cpu", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": f"{REPO / 'ssl'}:{REPO / 'tests'}"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "_resnet18_small" in line]
    assert [r.split("|")[1].strip() for r in rows] == [
        "rotation_resnet18_small", "spark_resnet18_small", "simclr_resnet18_small", "moco_resnet18_small"]
    cells = {r.split("|")[1].strip().split("_")[0]: [c.strip() for c in r.split("|")] for r in rows}
    # The ceiling is FLOP-matched (bench.step.matched_batch): a supervised step costs 3 forward
    # units per image; rotation runs 4 rotations of each image (4 x 3 units), SimCLR two views
    # (2 x 3), MoCo the query forward and backward plus the key forward (3 + 1). The heads'
    # FLOPs are under 1% of ResNet-18's. Measured at batch 16: 64, 32 and 21.
    batch = {name: int(c[3]) for name, c in cells.items()}
    ceiling = {name: int(c[6]) for name, c in cells.items()}
    assert ceiling["rotation"] == 4 * batch["rotation"]
    assert ceiling["simclr"] == 2 * batch["simclr"]
    assert ceiling["moco"] == round(batch["moco"] * 4 / 3)
    # ours/ceiling is the ratio of the two steps' FLOP rates, so of their MFUs (same peak)
    for c in cells.values():
        ratio, mfu, ceiling_mfu = float(c[7]), float(c[8]), float(c[9])
        assert ratio == pytest.approx(mfu / ceiling_mfu, rel=0.05, abs=0.02), c
