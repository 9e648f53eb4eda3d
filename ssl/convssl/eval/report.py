"""The probe report: ``report.json`` (everything), ``report.md`` (a table), ``stages.png``.

Accuracies are stored as top-1 fractions in [0, 1] and shown in percent. The plot is drawn with PIL so the report needs no
plotting library.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLUMNS = ("stage", "channels", "reduction", "grid", "dims", "linear top-1", "wd", "kNN@20", "kNN@200")
_GREY = (110, 110, 110)
_COLORS = {"linear": (31, 119, 180), "kNN@20": (255, 127, 14), "kNN@200": (44, 160, 44)}


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def table_rows(report: dict) -> list[tuple[str, ...]]:
    return [
        (s["name"], str(s["channels"]), str(s["reduction"]), f"{s['grid']}x{s['grid']}", str(s["dims"]),
         _pct(s["linear_top1"]), f"{s['linear_wd']:.0e}", _pct(s.get("knn20")), _pct(s.get("knn200")))
        for s in report["stages"]
    ]


def format_table(report: dict) -> str:
    """The per-stage table as aligned plain text (for the terminal)."""
    rows = [COLUMNS, *table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    counts = report["counts"]
    seed = report.get("seed")
    source = report.get("checkpoint") or ("random init" + (f" (seed {seed})" if seed is not None else ""))
    lines = [
        f"# Probe of `{report['encoder']['spec']}`",
        "",
        f"- weights: {source}" + (f", step {report['step']}" if report.get("step") is not None else ""),
        f"- data: {counts['train']} train / {counts['val']} val samples, {counts['classes']} classes "
        f"(chance {100 * report['chance']:.2f}%), {report['data']['size']} px, {report['data']['channels']} channel(s)",
        "- linear: standardized features, L-BFGS logistic regression, wd chosen on a "
        f"{report['protocol']['heldout']:.0%} held-out split of train, refit on all of train",
        f"- kNN: cosine, votes weighted exp(s/{report['protocol']['knn_temperature']})",
        f"- time: {report['seconds']['total']:.1f} s",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    return "\n".join(lines) + "\n"


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
    """Grouped bars per stage (linear, kNN@20, kNN@200), a dashed line at chance."""
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
            _text(draw, (bx + bar / 2, y_of(value) - 2), f"{100 * value:.0f}", fill="black", font=small, anchor="mb")
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
