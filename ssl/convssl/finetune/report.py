"""The fine-tuning report, beside the probe's: ``report.json`` (everything) and
``report.md``; with a baseline, ``comparison.json`` / ``comparison.md`` (pretrained vs
random init, one row, with the paired bootstrap gain and a verdict). Accuracies are stored
as top-1 fractions in [0, 1], shown in %, with 95% intervals over the val images.
"""

from __future__ import annotations

import json
from pathlib import Path

from convssl.eval.bootstrap import Interval, paired_differences
from convssl.eval.correctness import unpack_bits
from convssl.eval.verdict import classify, format_difference, format_interval, interval_of, verdict_line


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
        *([f"- val top-1: {_with_interval(report)} (95% percentile bootstrap over the {counts['val']} val images)"]
          if report.get("top1_ci") else []),
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


COMPARISON_COLUMNS = ("labels", "pretrained top-1 [95% CI]", "random init top-1 [95% CI]", "gain [95% CI, paired]",
                      "steps x batch")


def _with_interval(report: dict) -> str:
    iv = interval_of(report.get("top1_ci"), report["top1"])
    return format_interval(iv) if iv is not None else _pct(report["top1"])


def paired_gain(pretrained: dict, baseline: dict) -> Interval | None:
    """The pretrained run's top-1 minus the baseline's, with its paired bootstrap interval over
    the same val images (None for reports without per-image correctness, or other images)."""
    a, b = pretrained.get("heldout"), baseline.get("heldout")
    if not a or not b or (a["count"], a["labels_sha256"]) != (b["count"], b["labels_sha256"]):
        return None
    boot = pretrained["bootstrap"]
    (gain,) = paired_differences(unpack_bits(pretrained["correct"], a["count"]),
                                 unpack_bits(baseline["correct"], a["count"]),
                                 resamples=boot["resamples"], seed=boot["seed"])
    return gain


def comparison_row(pretrained: dict, baseline: dict) -> tuple[str, ...]:
    labels, p = pretrained["labels"], pretrained["protocol"]
    gain = paired_gain(pretrained, baseline)
    return (f"{100 * labels['fraction']:g}% ({labels['count']})", _with_interval(pretrained), _with_interval(baseline),
            format_difference(gain) if gain else f"{100 * (pretrained['top1'] - baseline['top1']):+.1f}",
            f"{p['steps']} x {p['global_batch']}")


def comparison_verdict(pretrained: dict, baseline: dict) -> str | None:
    """``fine-tuned: pays, +2.1 [+1.4, +2.8] over random init`` (None without intervals)."""
    gain = paired_gain(pretrained, baseline)
    return None if gain is None else verdict_line("fine-tuned", gain, "random init", pretrained["counts"]["val"])


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
        *(["", f"Verdict: {line}"] if (line := comparison_verdict(pretrained, baseline)) else []),
    ]) + "\n"
    gain = paired_gain(pretrained, baseline)
    paths = {"json": out_dir / "comparison.json", "md": out_dir / "comparison.md"}
    paths["json"].write_text(json.dumps({
        "format": "convssl-finetune-comparison/1", "labels": pretrained["labels"],
        "pretrained_top1": pretrained["top1"], "random_init_top1": baseline["top1"],
        "gain": pretrained["top1"] - baseline["top1"],
        "gain_ci": gain.as_list() if gain else None,
        "verdict": classify(gain) if gain else None,
        "line": comparison_verdict(pretrained, baseline),
        "pretrained": str(out_dir / "report.json"), "baseline": str(Path(baseline_dir) / "report.json"),
    }, indent=2) + "\n")
    paths["md"].write_text(text)
    return paths


def _spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (n - 1), min and max."""
    n = len(values)
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": n}


def _spread_text(s: dict) -> str:
    return f"{100 * s['mean']:.1f} +- {100 * s['sd']:.1f} (min {100 * s['min']:.1f}, max {100 * s['max']:.1f})"


def write_label_seeds(draws: list[dict], out_dir: str | Path) -> dict[str, Path]:
    """``label_seeds.json`` / ``label_seeds.md`` in ``out_dir``: per label draw the top-1 with its
    interval (and, with a baseline, the paired gain and verdict), then the spread across draws:
    mean +- sample sd, min, max. The intervals say how much the val images' sample moves a
    figure; the spread, how much the choice of labeled images does."""
    out_dir = Path(out_dir)
    with_base = all("random" in d for d in draws)
    header = ["label seed", "labels", "pretrained top-1 [95% CI]"]
    header += ["random init top-1 [95% CI]", "gain [95% CI, paired]", "verdict"] if with_base else []
    rows, records = [], []
    for d in draws:
        pre = d["pretrained"]
        row = [str(pre["labels"]["seed"]), str(pre["labels"]["count"]), _with_interval(pre)]
        record = {"label_seed": pre["labels"]["seed"], "labels": pre["labels"]["count"], "pretrained_top1": pre["top1"],
                  "pretrained_top1_ci": pre.get("top1_ci")}
        if with_base:
            base = d["random"]
            gain = paired_gain(pre, base)
            row += [_with_interval(base), format_difference(gain) if gain else "-", classify(gain) if gain else "-"]
            record |= {"random_init_top1": base["top1"], "random_init_top1_ci": base.get("top1_ci"),
                       "gain": pre["top1"] - base["top1"], "gain_ci": gain.as_list() if gain else None,
                       "verdict": classify(gain) if gain else None}
        rows.append(row)
        records.append(record)
    spread = {"pretrained_top1": _spread([r["pretrained_top1"] for r in records])}
    if with_base:
        spread |= {"random_init_top1": _spread([r["random_init_top1"] for r in records]),
                   "gain": _spread([r["gain"] for r in records])}
    first = draws[0]["pretrained"]
    text = "\n".join([
        f"# Fine-tuning `{first['encoder']['spec']}` over {len(draws)} label draws "
        f"({100 * first['labels']['fraction']:g}% of the labels each)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "Spread across the label draws (mean +- sample sd, in %):",
        "",
        *(f"- {name.replace('_', ' ')}: {_spread_text(s)}" for name, s in spread.items()),
    ]) + "\n"
    paths = {"json": out_dir / "label_seeds.json", "md": out_dir / "label_seeds.md"}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps({"format": "convssl-finetune-label-seeds/1", "draws": records,
                                         "spread": spread}, indent=2) + "\n")
    paths["md"].write_text(text)
    return paths
