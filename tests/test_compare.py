"""``convssl compare`` over real run directories: a monitored and probed run, a multi-task run."""

from __future__ import annotations

from pathlib import Path

import pytest

from convssl.cli import main
from convssl.eval.compare import compare_runs
from convssl.eval.probe import probe_checkpoint
from convssl.recipe import recipe_from_dict
from convssl import pretrain  # the public API: monitor=SHARDS is its online monitor callback

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "fmnist"


def tiny(task: dict, **train):
    return recipe_from_dict({
        "encoder": {"spec": "custom_nets:gn_convnet", "in_chans": 1},
        "data": {"size": 16, "channels": 1, "mean": [0.286], "std": [0.353], "batch_size": 8, "workers": 0,
                 "shuffle_buffer": 16},
        "task": task,
        "optim": {"name": "sgd", "lr_per_256": 0.5, "weight_decay": 0.0},
        "train": {"max_steps": 4, "seed": 0, "log_every": 1, "ckpt_every": 0, "channels_last": False, **train},
    })


def small_labeled(root: Path, name: str, count: int) -> str:
    """The first ``count`` images of the embedded labeled shards, rewritten as real shards
    (an ImageFolder tree -> convssl's writer), so the probe in this test stays quick."""
    from PIL import Image

    from convssl.data.shard_dataset import ShardDataset
    from convssl.data.sources import open_source
    from convssl.data.writer import write_shards

    tree = root / f"{name}-src"
    for i, sample in enumerate(ShardDataset(str(DATA / name), labeled=True, channels=1)):
        if i == count:
            break
        (tree / f"c{sample['cls']}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample["img"][0].numpy(), "L").save(tree / f"c{sample['cls']}" / f"{i:04d}.png")
    write_shards(open_source(str(tree), labeled=True), root / name)
    return str(root / name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train, test = small_labeled(root, "train", 120), small_labeled(root, "test", 60)
    rotation = tiny({"name": "rotation", "hidden": 16}, monitor_every=2)
    pretrain(rotation, str(DATA / "unlabeled"), root / "rotation", progress=False, monitor=train)
    probe_checkpoint(root / "rotation", train, test, root / "rotation" / "probe", workers=0, max_dims=64, knn=True,
                     trust=["custom_nets:gn_convnet"], baselines=["random"])
    multi = tiny({"name": "multi", "tasks": [{"name": "rotation", "hidden": 16, "weight": 0.4},
                                             {"name": "simclr", "proj_hidden_dim": 16, "proj_out_dim": 8}]})
    pretrain(multi, str(DATA / "unlabeled"), root / "multi", progress=False)
    return root


def test_compare_renders_table_and_plots_from_real_runs(runs, tmp_path):
    result = compare_runs([runs / "rotation", runs / "multi"], tmp_path / "cmp")
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert text == result["markdown"]
    main_table = text.split("## Linear probe")[0]
    table = [l for l in main_table.splitlines() if l.startswith("| rotation |") or l.startswith("| multi |")]
    assert len(table) == 2
    rot, multi = (dict(zip(result["markdown"].splitlines()[2][2:-2].split(" | "), l[2:-2].split(" | ")))
                  for l in table)
    assert rot["task"] == "rotation" and multi["task"] == "multi(rotationx0.4 + simclrx1)"
    assert rot["steps"] == multi["steps"] == "4"
    best = "probe best top-1 % [95% CI] (stage)"
    assert multi[best] == "-" and multi["gain over baseline (best stage)"] == "-"
    # the probe's cells as its report holds them: "84.0 [83.3, 84.7] (layer3)", "+2.1 [+1.4, +2.8] pays (random init)"
    import json

    from convssl.eval.bootstrap import Interval
    from convssl.eval.verdict import format_difference, format_interval

    report = json.loads((runs / "rotation" / "probe" / "report.json").read_text())
    i = max(range(len(report["stages"])), key=lambda j: report["stages"][j]["linear_top1"])
    stage, diff = report["stages"][i], report["baselines"][0]["differences"][i]
    assert rot[best] == f"{format_interval(Interval(stage['linear_top1'], *stage['linear_ci']))} ({stage['name']})"
    linear = diff["linear"]
    assert rot["gain over baseline (best stage)"] == \
        f"{format_difference(Interval(linear['value'], linear['low'], linear['high']))} {diff['verdict']} (random init)"
    knn = rot["monitor kNN % [95% CI]"]
    assert float(knn.split()[0]) > 10 and "[" in knn and "over random init" in knn
    assert rot["collapsed"] == "no" and multi["monitor kNN % [95% CI]"] == "-"
    assert "## Linear probe top-1 per stage" in text
    names = sorted(Path(p).name for p in result["plots"])
    assert names == ["loss.png", "monitor.png", "probe_stages.png", "throughput.png"]
    for p in result["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(p).stat().st_size > 5000


def test_compare_baseline_pairs_runs_image_by_image(runs, tmp_path, capsys):
    """--baseline: a run against its own probe gains exactly 0; a report on other images is not paired."""
    assert main(["compare", str(runs / "rotation"), str(runs / "multi"), "--out", str(tmp_path / "c"),
                 "--baseline", str(runs / "rotation" / "probe")]) == 0
    captured = capsys.readouterr()
    rows = [line for line in captured.out.splitlines() if line.startswith("| rotation | +0.0 [+0.0, +0.0]")]
    assert len(rows) == 1 and rows[0].count("+0.0 [+0.0, +0.0]") == rows[0].count("(")
    assert "- rotation, best stage " in captured.out and "no gain measurable over rotation (step 4)" in captured.out

    import json

    other = json.loads((runs / "rotation" / "probe" / "report.json").read_text())
    other["heldout"]["labels_sha256"] = "0" * 64  # as if probed on other val shards
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["compare", str(runs / "rotation"), "--out", str(tmp_path / "c2"),
                 "--baseline", str(tmp_path / "other.json")]) == 0
    captured = capsys.readouterr()
    assert "pairing needs the same val shards" in captured.err and "## Gains over" not in captured.out
    assert main(["compare", str(runs / "rotation"), "--out", str(tmp_path / "c3"),
                 "--baseline", str(tmp_path / "nothing")]) == 2
    assert "no probe report.json" in capsys.readouterr().err


def test_compare_cli_and_a_folder_that_is_not_a_run(runs, tmp_path, capsys):
    assert main(["compare", str(runs / "rotation"), "--out", str(tmp_path / "c")]) == 0
    assert "| rotation |" in capsys.readouterr().out
    assert main(["compare", str(runs / "rotation"), str(tmp_path), "--out", str(tmp_path / "c2")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
