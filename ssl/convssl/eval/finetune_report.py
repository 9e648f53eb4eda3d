"""The fine-tuning report, beside the probe's: ``report.json`` (everything) and
``report.md``; with a baseline, ``comparison.json`` / ``comparison.md`` (pretrained vs
random init, one row). Accuracies are stored as top-1 fractions in [0, 1], shown in %.
"""

from __future__ import annotations

import json
from pathlib import Path


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _weights(report: dict) -> str:
    if report["init"] == "pretrained":
        return f"{report['checkpoint']}, step {report['step']} ({report['pretext'] or 'pretext unknown'})"
    return f"random init (seed {report['seed']}), architecture of {report['architecture_from']}"


def format_markdown(report: dict) -> str:
    labels, counts, p = report["labels"], report["counts"], report["protocol"]
    lines = [
        f"# Fine-tuning of `{report['encoder']['spec']}`",
        "",
        f"- weights: {_weights(report)}",
        f"- labels: {100 * labels['fraction']:g}% = {labels['count']} of {labels['of']} training samples, "
        f"class-balanced (seed {labels['seed']}), {counts['classes']} classes (chance {100 * report['chance']:.2f}%)",
        f"- data: {report['data']['size']} px, {report['data']['channels']} channel(s); {counts['val']} val samples",
        f"- schedule: {p['steps']} steps x {p['global_batch']} images ({p['epochs_over_subset']:.1f} epochs of the "
        f"subset), {p['optimizer']} peak lr {p['peak_lr']:.3g}, layer decay {p['layer_decay']}, {p['schedule']}",
        f"- augmentation: {p['augmentation']}; label smoothing {p['label_smoothing']}",
        f"- time: {report['seconds']:.1f} s on {report['device']} x {report['world_size']}",
        "",
        "| step | val top-1 | val loss |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {h['step']} | {_pct(h['top1'])} | {h['loss']:.4f} |" for h in report["history"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json and report.md into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(format_markdown(report))
    return paths


COMPARISON_COLUMNS = ("labels", "pretrained top-1", "random init top-1", "gain", "steps x batch")


def comparison_row(pretrained: dict, baseline: dict) -> tuple[str, ...]:
    labels, p = pretrained["labels"], pretrained["protocol"]
    return (f"{100 * labels['fraction']:g}% ({labels['count']})", _pct(pretrained["top1"]), _pct(baseline["top1"]),
            f"{100 * (pretrained['top1'] - baseline['top1']):+.2f}", f"{p['steps']} x {p['global_batch']}")


def write_comparison(pretrained: dict, baseline: dict, out_dir: str | Path, baseline_dir: str | Path) -> dict[str, Path]:
    """``comparison.json`` and ``comparison.md`` in ``out_dir`` (the pretrained run's
    folder): the pretrained run against its baseline in ``baseline_dir``."""
    out_dir = Path(out_dir)
    row = comparison_row(pretrained, baseline)
    text = "\n".join([
        f"# Fine-tuning `{pretrained['encoder']['spec']}`: pretrained vs random init",
        "",
        f"- pretrained: {_weights(pretrained)}",
        f"- baseline: {_weights(baseline)}, the same labels, schedule and head initialisation",
        "",
        "| " + " | ".join(COMPARISON_COLUMNS) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COMPARISON_COLUMNS))) + "|",
        "| " + " | ".join(row) + " |",
    ]) + "\n"
    paths = {"json": out_dir / "comparison.json", "md": out_dir / "comparison.md"}
    paths["json"].write_text(json.dumps({
        "format": "convssl-finetune-comparison/1", "labels": pretrained["labels"],
        "pretrained_top1": pretrained["top1"], "random_init_top1": baseline["top1"],
        "gain": pretrained["top1"] - baseline["top1"],
        "pretrained": str(out_dir / "report.json"), "baseline": str(Path(baseline_dir) / "report.json"),
    }, indent=2) + "\n")
    paths["md"].write_text(text)
    return paths
