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
    for row in rows:
        ratio = row.split("|")[7].strip()
        assert float(ratio) > 0  # ours/ceiling was measured
