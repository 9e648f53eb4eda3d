"""Does pretraining pay? A one-line verdict per stage from a paired bootstrap difference.

The rule reads the 95% percentile interval of the paired difference in linear top-1
(``bootstrap.paired_differences``): above 0, the encoder *pays* over that baseline; below
0, it *hurts*; containing 0, no gain is measurable with that many held-out images (which
says as much about the held-out set's size as about the encoder). One verdict per stage
is a family of tests; read a single "pays" among many stages with that in mind.

Numbers are shown in percent with one decimal, as ``84.0 [83.3, 84.7]`` and
differences as ``+2.1 [+1.4, +2.8]``.
"""

from __future__ import annotations

from convssl.eval.bootstrap import Interval

PAYS, HURTS, NO_GAIN = "pays", "hurts", "no gain measurable"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def format_interval(iv: Interval | None) -> str:
    """``84.0 [83.3, 84.7]`` (percent)."""
    if iv is None:
        return "-"
    return f"{_percent(iv.value):.1f} [{_percent(iv.low):.1f}, {_percent(iv.high):.1f}]"


def _percent(x: float) -> float:
    """``100 x`` rounded to 1e-9 first: accuracies over N images are multiples of 1/N, often
    exactly halfway between two printed decimals (7/400 = 1.75%), and the last bit of a sum
    taken in another order must not move the printed figure (1.7499999 -> 1.7, 1.75 -> 1.8)."""
    return round(100 * x, 9)


def _points(x: float) -> str:
    """Signed percentage points, one decimal; two when one would show a nonzero as 0.0, so an
    interval that excludes 0 never reads ``[+0.0, ...]``."""
    text = f"{_percent(x):+.1f}"
    return f"{_percent(x):+.2f}" if x != 0 and float(text) == 0 else text


def format_difference(iv: Interval | None) -> str:
    """``+2.1 [+1.4, +2.8]`` (percentage points)."""
    if iv is None:
        return "-"
    return f"{_points(iv.value)} [{_points(iv.low)}, {_points(iv.high)}]"


def interval_of(stored: dict | list | None, value: float | None) -> Interval | None:
    """An ``Interval`` from a report's ``[low, high]`` (or ``{"value", "low", "high"}``) and its value."""
    if stored is None or value is None:
        return None
    if isinstance(stored, dict):
        return Interval(float(stored["value"]), float(stored["low"]), float(stored["high"]))
    return Interval(float(value), float(stored[0]), float(stored[1]))


def classify(diff: Interval) -> str:
    """``pays`` (interval above 0), ``hurts`` (below 0) or ``no gain measurable``."""
    if diff.low > 0:
        return PAYS
    if diff.high < 0:
        return HURTS
    return NO_GAIN


def verdict_line(stage: str, diff: Interval, baseline: str, n_images: int) -> str:
    """``layer3: pays, +2.1 [+1.4, +2.8] over random init``; ``layer1: no gain measurable over
    random init with 3000 images (+0.3 [-0.5, +1.1])``; ``layer4: hurts, -1.2 [-2.0, -0.4] against ...``."""
    kind = classify(diff)
    text = format_difference(diff)
    if kind == PAYS:
        return f"{stage}: pays, {text} over {baseline}"
    if kind == HURTS:
        return f"{stage}: hurts, {text} against {baseline}"
    return f"{stage}: no gain measurable over {baseline} with {n_images} images ({text})"
