"""A comparison report over several run directories, from what runs already write.

Reads each run's ``config.yaml`` (task, encoder, budget), ``metrics.jsonl`` (loss, img/s,
the online monitor's ``monitor/*`` scalars) and, when present, a probe ``report.json``
(in the run dir, its ``probe/`` folder, or any direct subfolder). Writes ``compare.md``
(one table) and PNG plots: ``loss.png``, ``monitor.png`` (online probe and kNN, when
some run was monitored), ``probe_stages.png`` (per-stage linear top-1, when probed) and
``throughput.png`` (images/s and wall time). matplotlib is needed for the plots
(``pip install convssl[plots]``); without it, the table is written alone and the
missing plots are named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from convssl.errors import ConvsslError
from convssl.eval.bootstrap import RESAMPLES, SEED, Interval, paired_differences
from convssl.eval.correctness import unpack_bits
from convssl.eval.report import with_interval
from convssl.eval.verdict import format_difference, format_interval, interval_of, verdict_line


@dataclass
class RunSummary:
    """What one run directory tells about itself."""

    name: str
    path: Path
    config: dict
    metrics: list[dict]
    probe: dict | None = None
    probe_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        task = self.config.get("task", {})
        if task.get("name") == "multi":
            parts = [f"{t.get('name')}x{t.get('weight', 1.0):g}" for t in task.get("tasks", [])]
            return "multi(" + " + ".join(parts) + ")"
        return str(task.get("name", "?"))

    def series(self, key: str) -> tuple[list[int], list[float]]:
        rows = [m for m in self.metrics if isinstance(m.get(key), (int, float))]
        return [int(m["step"]) for m in rows], [float(m[key]) for m in rows]

    def last(self, key: str) -> float | None:
        _, values = self.series(key)
        return values[-1] if values else None

    def mean(self, key: str, skip_first: bool = True) -> float | None:
        _, values = self.series(key)
        values = values[1:] if skip_first and len(values) > 1 else values
        return sum(values) / len(values) if values else None

    def wall_seconds(self) -> float | None:
        """Training time estimated from the logged rate: sum over log windows of
        (steps in the window x global batch) / img_per_s."""
        batch = self.config.get("run", {}).get("global_batch") or self.config.get("data", {}).get("batch_size")
        rows = [m for m in self.metrics if m.get("img_per_s")]
        if not rows or not batch:
            return None
        total, prev = 0.0, 0
        for m in rows:
            total += (int(m["step"]) - prev) * batch / float(m["img_per_s"])
            prev = int(m["step"])
        return total


def _find_probe(run: Path) -> Path | None:
    for candidate in (run / "report.json", run / "probe" / "report.json"):
        if candidate.is_file():
            return candidate
    found = sorted(run.glob("*/report.json"))
    return found[0] if found else None


def load_run(path: str | Path) -> RunSummary:
    """A run directory's config, metrics and (optional) probe report; a clear error when
    it is not a run directory."""
    run = Path(path)
    config_path, metrics_path = run / "config.yaml", run / "metrics.jsonl"
    if not config_path.is_file() or not metrics_path.is_file():
        raise ConvsslError(f"{str(run)!r} is not a run directory (no config.yaml and metrics.jsonl); "
                           "give folders written by convssl pretrain --out")
    config = yaml.safe_load(config_path.read_text()) or {}
    metrics, warnings = [], []
    for i, line in enumerate(metrics_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            metrics.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.append(f"{metrics_path}:{i} is not JSON (a run killed mid-write?); skipped")
    probe_path = _find_probe(run)
    probe = json.loads(probe_path.read_text()) if probe_path else None
    return RunSummary(run.name or str(run), run, config, metrics, probe, probe_path, warnings)


def unique_names(runs: list[RunSummary]) -> None:
    """Runs with the same folder name are told apart by their parent folders."""
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.name}/{r.path.name}"


def _fmt(value, spec: str = ".4g", scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale if scale != 1.0 else value, spec)


def best_probe(run: RunSummary) -> tuple[str, float] | None:
    if not run.probe:
        return None
    stage = max(run.probe["stages"], key=lambda s: s["linear_top1"])
    return stage["name"], stage["linear_top1"]


def _best_index(probe: dict) -> int:
    return max(range(len(probe["stages"])), key=lambda i: probe["stages"][i]["linear_top1"])


def knn_of_best(run: RunSummary) -> float | None:
    if not run.probe:
        return None
    stage = max(run.probe["stages"], key=lambda s: s["linear_top1"])
    return stage.get("knn20")


def _best_cell(run: RunSummary) -> str:
    """``84.0 [83.3, 84.7] (layer3)``: the best stage's linear top-1 with its interval."""
    if not run.probe:
        return "-"
    stage = run.probe["stages"][_best_index(run.probe)]
    return f"{with_interval(stage, 'linear')} ({stage['name']})"


def _gain_cell(run: RunSummary) -> str:
    """The paired gain at the best stage over the probe's first baseline, with its verdict."""
    if not run.probe or not run.probe.get("baselines"):
        return "-"
    base = run.probe["baselines"][0]
    diff = base["differences"][_best_index(run.probe)]
    return f"{format_difference(interval_of(diff['linear'], 0.0))} {diff['verdict']} ({base['label']})"


def _monitor_knn_cell(run: RunSummary) -> str:
    """The online monitor's last kNN top-1, with its interval and its gain over random init when logged."""
    knn = run.last("monitor/knn_top1")
    if knn is None:
        return "-"
    low, high = run.last("monitor/knn_low"), run.last("monitor/knn_high")
    text = f"{100 * knn:.1f}" if low is None or high is None else format_interval(Interval(knn, low, high))
    gain = [run.last(f"monitor/knn_gain{k}") for k in ("", "_low", "_high")]
    if None not in gain:
        text += f", {format_difference(Interval(*gain))} over random init"
    return text


TABLE_COLUMNS = ("run", "task", "encoder", "steps", "batch", "final loss", "img/s", "train s",
                 "probe best top-1 % [95% CI] (stage)", "gain over baseline (best stage)", "kNN@20 %",
                 "monitor probe %", "monitor kNN % [95% CI]", "eff. rank", "collapsed")


def markdown_table(runs: list[RunSummary]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(TABLE_COLUMNS) - 3)) + "|"]
    for r in runs:
        steps = r.metrics[-1]["step"] if r.metrics else None
        collapsed = r.last("monitor/collapsed")
        cells = [
            r.name, r.task, str(r.config.get("encoder", {}).get("spec", "?")), _fmt(int(steps) if steps is not None else None, "d"),
            _fmt(r.config.get("run", {}).get("global_batch") or r.config.get("data", {}).get("batch_size"), ""),
            _fmt(r.last("loss")), _fmt(r.mean("img_per_s"), ".1f"), _fmt(r.wall_seconds(), ".0f"),
            _best_cell(r), _gain_cell(r), _fmt(knn_of_best(r), ".1f", 100),
            _fmt(r.last("monitor/probe_top1"), ".1f", 100), _monitor_knn_cell(r),
            _fmt(r.last("monitor/eff_rank"), ".1f"), "-" if collapsed is None else ("yes" if collapsed else "no"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_table(runs: list[RunSummary]) -> str | None:
    """Per-stage linear top-1 of the probed runs (stages in each report's order)."""
    probed = [r for r in runs if r.probe]
    if not probed:
        return None
    width = max(len(r.probe["stages"]) for r in probed)
    header = "| run | " + " | ".join(f"stage {i + 1}" for i in range(width)) + " |"
    lines = [header, "|---|" + "---:|" * width]
    for r in probed:
        cells = [f"{with_interval(s, 'linear')} ({s['name']})" for s in r.probe["stages"]]
        cells += ["-"] * (width - len(cells))
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_all(runs: list[RunSummary], out: Path) -> list[Path]:
    """Write the PNG plots; returns their paths (raises ImportError without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        ax.plot(*r.series("loss"), label=r.name)
    ax.set(xlabel="step", ylabel="loss", title="training loss")
    ax.legend(fontsize=8)
    save(fig, "loss.png")

    if any(r.series("monitor/knn_top1")[0] for r in runs):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for key, ax, title in zip(("monitor/probe_top1", "monitor/knn_top1", "monitor/eff_rank"), axes,
                                  ("online linear probe top-1", "kNN@20 top-1", "effective rank")):
            for r in runs:
                steps, values = r.series(key)
                if steps:
                    ax.plot(steps, values, marker="o", label=r.name)
            ax.set(xlabel="step", title=title)
        axes[0].legend(fontsize=8)
        save(fig, "monitor.png")

    probed = [r for r in runs if r.probe]
    if probed:
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in probed:
            stages = r.probe["stages"]
            ax.plot(range(1, len(stages) + 1), [100 * s["linear_top1"] for s in stages], marker="o", label=r.name)
        ax.set(xlabel="stage", ylabel="linear top-1 (%)", title="probe per stage")
        deepest = max(probed, key=lambda r: len(r.probe["stages"])).probe["stages"]
        ax.set_xticks(range(1, len(deepest) + 1), [f"{i}\n{s['name']}" for i, s in enumerate(deepest, 1)])
        ax.legend(fontsize=8)
        save(fig, "probe_stages.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [r.name for r in runs]
    axes[0].bar(names, [r.mean("img_per_s") or 0.0 for r in runs])
    axes[0].set(ylabel="images/s", title="training throughput")
    axes[1].bar(names, [r.wall_seconds() or 0.0 for r in runs])
    axes[1].set(ylabel="s", title="training time")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    save(fig, "throughput.png")
    return written


def load_probe_report(path: str | Path) -> tuple[dict, Path]:
    """A probe report from a ``report.json``, a folder holding one, or a run directory (its probe)."""
    path = Path(path)
    found = path if path.is_file() else (path / "report.json" if (path / "report.json").is_file() else
                                         (_find_probe(path) if path.is_dir() else None))
    if found is None:
        raise ConvsslError(f"--baseline {str(path)!r}: no probe report.json there (give a report.json, its folder, "
                           "or a run directory with a probe)")
    try:
        report = json.loads(found.read_text())
    except json.JSONDecodeError as exc:
        raise ConvsslError(f"--baseline {str(found)!r} is not JSON ({exc})") from None
    if not isinstance(report, dict) or "stages" not in report:
        raise ConvsslError(f"--baseline {str(found)!r} is not a convssl probe report")
    return report, found


def paired_gains(report: dict, base: dict) -> tuple[list[tuple[str, Interval]], str | None]:
    """Per stage present in both (by name), ``report``'s linear top-1 minus ``base``'s with its
    paired bootstrap interval, recomputed from the stored per-image correctness. Returns
    ``(gains, None)``, or ``([], why)`` when the two cannot be paired (another held-out set,
    or reports written before correctness was stored)."""
    held, held_base = report.get("heldout"), base.get("heldout")
    if not held or not held_base:
        return [], "a report without per-image correctness (probed before intervals); probe it again"
    if (held["count"], held["labels_sha256"]) != (held_base["count"], held_base["labels_sha256"]):
        return [], (f"held out on other images ({held['count']} vs {held_base['count']}, or another label "
                    "sequence); pairing needs the same val shards")
    boot = report.get("bootstrap", {})
    n, by_name = held["count"], {s["name"]: s for s in base["stages"]}
    gains = []
    for stage in report["stages"]:
        other = by_name.get(stage["name"])
        if other is None:
            continue
        (diff,) = paired_differences(unpack_bits(stage["correct"]["linear"], n),
                                     unpack_bits(other["correct"]["linear"], n),
                                     resamples=boot.get("resamples", RESAMPLES), seed=boot.get("seed", SEED))
        gains.append((stage["name"], diff))
    if not gains:
        return [], "no stage name in common with the baseline's"
    return gains, None


def baseline_section(runs: list[RunSummary], base: dict, base_name: str) -> tuple[str, list[str]]:
    """Markdown: every probed run's paired gain per stage over the ``base`` report, and a verdict
    line at each run's best stage; plus warnings for runs that cannot be paired."""
    lines, warnings = [], []
    n = (base.get("heldout") or {}).get("count", base.get("counts", {}).get("val"))
    rows, verdicts = [], []
    for r in runs:
        if not r.probe:
            continue
        gains, why = paired_gains(r.probe, base)
        if why:
            warnings.append(f"{r.name}: not compared with {base_name}: {why}")
            continue
        rows.append(f"| {r.name} | " + " | ".join(f"{format_difference(d)} ({name})" for name, d in gains) + " |")
        best = r.probe["stages"][_best_index(r.probe)]["name"]
        for name, d in gains:
            if name == best:
                verdicts.append(f"- {r.name}, best stage {verdict_line(name, d, base_name, n)}")
    if rows:
        width = max(row.count(" | ") for row in rows)
        lines = [f"## Gains over {base_name} (linear top-1, points, paired bootstrap over the same {n} images)", "",
                 "| run | " + " | ".join(f"stage {i + 1}" for i in range(width)) + " |",
                 "|---|" + "---:|" * width, *rows, "", *verdicts]
    return "\n".join(lines), warnings


def compare_runs(run_dirs: list[str | Path], out: str | Path, baseline: str | Path | None = None) -> dict:
    """Write ``compare.md`` and the plots into ``out``; returns {"markdown", "plots", "warnings"}.

    ``baseline``: a probe report (file, folder or run directory) every probed run is paired
    with, image by image (the same val shards), for gains with intervals and verdicts.
    """
    if not run_dirs:
        raise ConvsslError("compare needs at least one run directory")
    base = load_probe_report(baseline) if baseline is not None else None
    runs = [load_run(p) for p in run_dirs]
    unique_names(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    warnings = [w for r in runs for w in r.warnings]
    try:
        plots = plot_all(runs, out)
    except ImportError:
        plots = []
        warnings.append("matplotlib is not installed (pip install convssl[plots]): no PNG plots written")
    parts = ["# Run comparison", "", markdown_table(runs)]
    stages = stage_table(runs)
    if stages:
        parts += ["", "## Linear probe top-1 per stage (%, 95% CI)", "", stages]
    if base is not None:
        report, found = base
        section, more = baseline_section(runs, report, _base_name(report, found))
        warnings += more
        if section:
            parts += ["", section]
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    text = "\n".join(parts) + "\n"
    (out / "compare.md").write_text(text)
    return {"markdown": text, "plots": [str(p) for p in plots], "warnings": warnings}


def _base_name(report: dict, found: Path) -> str:
    """How verdicts name a baseline report: its checkpoint's run, or "random init" for a random-init probe."""
    if report.get("checkpoint"):
        ckpt = Path(report["checkpoint"])
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        return f"{run.name or ckpt.name} (step {report.get('step')})"
    if report.get("seed") is not None:
        return f"random init (seed {report['seed']})"
    return str(found)
