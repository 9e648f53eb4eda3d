"""The probe report: ``report.json`` (everything), ``report.md`` (a table), ``stages.png``.

Accuracies are stored as top-1 fractions in [0, 1] and shown in percent. The plot is drawn with PIL so the report needs no
plotting library.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from convssl.eval.verdict import format_difference, format_interval, interval_of

COLUMNS = ("stage", "channels", "reduction", "grid", "dims", "linear top-1 [95% CI]", "wd", "kNN@20", "kNN@200")
_GREY = (110, 110, 110)
_COLORS = {"linear": (31, 119, 180), "kNN@20": (255, 127, 14), "kNN@200": (44, 160, 44)}


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def with_interval(stage: dict, metric: str) -> str:
    """``84.0 [83.3, 84.7]`` for a stage row's metric (``linear``, ``knn20``, ``knn200``);
    the bare value for reports written before intervals."""
    value = stage.get("linear_top1" if metric == "linear" else metric)
    iv = interval_of(stage.get(f"{metric}_ci"), value)
    return format_interval(iv) if iv is not None else _pct(value)


def table_rows(report: dict) -> list[tuple[str, ...]]:
    return [
        (s["name"], str(s["channels"]), str(s["reduction"]), f"{s['grid']}x{s['grid']}", str(s["dims"]),
         with_interval(s, "linear"), f"{s['linear_wd']:.0e}", with_interval(s, "knn20"), with_interval(s, "knn200"))
        for s in report["stages"]
    ]


def _aligned(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                     for r in rows)


def _markdown(rows: list[tuple[str, ...]]) -> list[str]:
    return ["| " + " | ".join(rows[0]) + " |",
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(rows[0]))) + "|",
            *("| " + " | ".join(r) + " |" for r in rows[1:])]


def format_table(report: dict) -> str:
    """The per-stage table as aligned plain text (for the terminal)."""
    return _aligned([COLUMNS, *table_rows(report)])


def comparison_rows(report: dict) -> list[tuple[str, ...]]:
    """Header and one row per stage: linear top-1 of the probed encoder, of every baseline
    and the paired difference to each, all with 95% intervals."""
    baselines = report.get("baselines") or []
    header = ("stage", "probed", *(c for b in baselines for c in (b["label"], f"gain over {b['label']}")))
    rows = [header]
    for s, stage in enumerate(report["stages"]):
        cells = [stage["name"], with_interval(stage, "linear")]
        for b in baselines:
            cells.append(with_interval(b["stages"][s], "linear"))
            cells.append(format_difference(interval_of(b["differences"][s]["linear"], 0.0)))
        rows.append(tuple(cells))
    return rows


def format_comparison(report: dict) -> str:
    """The baselines table (linear top-1 in %, paired gains in points) and the verdict lines,
    as plain text; empty without baselines."""
    if not report.get("baselines"):
        return ""
    return _aligned(comparison_rows(report)) + "\n\n" + "\n".join(report["verdicts"])


def format_markdown(report: dict) -> str:
    counts = report["counts"]
    seed = report.get("seed")
    source = report.get("checkpoint") or ("random init" + (f" (seed {seed})" if seed is not None else ""))
    boot = report.get("bootstrap")
    lines = [
        f"# Probe of `{report['encoder']['spec']}`",
        "",
        f"- weights: {source}" + (f", step {report['step']}" if report.get("step") is not None else ""),
        f"- data: {counts['train']} train / {counts['val']} val samples, {counts['classes']} classes "
        f"(chance {100 * report['chance']:.2f}%), {report['data']['size']} px, {report['data']['channels']} channel(s)",
        "- linear: standardized features, L-BFGS logistic regression, wd chosen on a "
        f"{report['protocol']['heldout']:.0%} held-out split of train, refit on all of train",
        f"- kNN: cosine, votes weighted exp(s/{report['protocol']['knn_temperature']})",
    ]
    if boot:
        lines.append(f"- intervals: {100 * boot['level']:.0f}% percentile bootstrap over the {counts['val']} val images, "
                     f"{boot['resamples']} resamples (seed {boot['seed']}); gains paired on the same resamples")
    lines += [f"- time: {report['seconds']['total']:.1f} s", "", *_markdown([COLUMNS, *table_rows(report)])]
    if report.get("baselines"):
        lines += ["", "## Against the baselines (linear top-1 %, same protocol, same images)", ""]
        lines += [f"- {b['label']}: {_source(b['source'])}" for b in report["baselines"]]
        lines += ["", *_markdown(comparison_rows(report)), "", "Verdicts:", ""]
        lines += [f"- {line}" for line in report["verdicts"]]
    return "\n".join(lines) + "\n"


def _source(source: dict) -> str:
    if source.get("kind") == "random":
        return f"the same architecture at random init (seed {source['seed']})"
    return f"{source.get('path')} (sha256 {str(source.get('sha256'))[:12]}...) in the same architecture"


def _dashed(draw: ImageDraw.ImageDraw, x0: float, x1: float, y: float, fill) -> None:
    for x in range(int(x0), int(x1), 8):
        draw.line([(x, y), (min(x + 4, x1), y)], fill=fill, width=2)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable in Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, xy, text: str, font, fill="black", anchor: str = "lt") -> None:
    """Text placed by a two-letter anchor (l/m/r, t/m/b) computed from its box, so it
    also works with Pillow's bitmap fallback font (where ``anchor=`` is unsupported)."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    dx = {"l": 0, "m": (x1 - x0) / 2, "r": x1 - x0}[anchor[0]] + x0
    dy = {"t": 0, "m": (y1 - y0) / 2, "b": y1 - y0}[anchor[1]] + y0
    draw.text((xy[0] - dx, xy[1] - dy), text, fill=fill, font=font)


def plot_stages(report: dict, path: str | Path) -> Path:
    """Grouped bars per stage (linear, kNN@20, kNN@200) with their 95% intervals as whiskers,
    a dashed line at chance."""
    stages = report["stages"]
    series = [("linear", "linear_top1"), ("kNN@20", "knn20"), ("kNN@200", "knn200")]
    series = [(label, key) for label, key in series if any(s.get(key) is not None for s in stages)]
    bar, gap = 34, 40
    group = bar * len(series) + gap
    left, right, top, bottom, plot_h = 60, 20, 60, 50, 300
    width = max(left + right + group * len(stages), 360)
    height = top + plot_h + bottom
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(11)

    def y_of(acc: float) -> float:
        return top + plot_h * (1 - acc)

    title = f"{report['encoder']['spec']}: top-1 per stage (%)"
    draw.text((left, 10), title, fill="black", font=font)
    for pct in range(0, 101, 20):
        y = y_of(pct / 100)
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        _text(draw, (left - 8, y), str(pct), fill="black", font=small, anchor="rm")
    draw.line([(left, top), (left, top + plot_h)], fill="black")
    draw.line([(left, top + plot_h), (width - right, top + plot_h)], fill="black")
    for i, stage in enumerate(stages):
        x0 = left + gap / 2 + i * group
        for j, (label, key) in enumerate(series):
            value = stage.get(key)
            if value is None:
                continue
            bx = x0 + j * bar
            draw.rectangle([bx + 2, y_of(value), bx + bar - 2, top + plot_h], fill=_COLORS[label])
            ci = stage.get(("linear" if key == "linear_top1" else key) + "_ci")
            if ci:  # the 95% interval as a whisker
                cx = bx + bar / 2
                draw.line([(cx, y_of(ci[0])), (cx, y_of(ci[1]))], fill="black", width=1)
                for end in ci:
                    draw.line([(cx - 4, y_of(end)), (cx + 4, y_of(end))], fill="black", width=1)
            _text(draw, (bx + bar / 2, y_of(max(value, ci[1]) if ci else value) - 2), f"{100 * value:.0f}",
                  fill="black", font=small, anchor="mb")
        _text(draw, (x0 + bar * len(series) / 2, top + plot_h + 8), stage["name"], fill="black", font=small, anchor="mt")
        _text(draw, (x0 + bar * len(series) / 2, top + plot_h + 24), f"/{stage['reduction']}", fill=(90, 90, 90),
                  font=small, anchor="mt")

    chance_y = y_of(report["chance"])
    _dashed(draw, left, width - right, chance_y, _GREY)

    x = left
    for label, _ in series:
        draw.rectangle([x, 36, x + 12, 48], fill=_COLORS[label])
        _text(draw, (x + 16, 42), label, fill="black", font=small, anchor="lm")
        x += 16 + int(draw.textlength(label, font=small)) + 18
    _dashed(draw, x, x + 14, 42, _GREY)
    _text(draw, (x + 18, 42), f"chance ({100 * report['chance']:.0f}%)", fill=_GREY, font=small, anchor="lm")
    path = Path(path)
    img.save(path)
    return path


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and stages.png into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "png": out_dir / "stages.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(format_markdown(report))
    plot_stages(report, paths["png"])
    return paths
