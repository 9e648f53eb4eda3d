"""``convssl bench data|step ...``: measured speed, printed as a table with ratios against a
baseline run side by side in the same process."""

from __future__ import annotations

import importlib

BENCHMARKS = {
    "data": "decode + crop img/s per worker: local shards, HTTP shards, ImageFolder + PIL",
    "step": "a task's training step: img/s, peak memory, time split, against a supervised step",
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, help_text in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_bench=f"convssl.bench.{name}")
        importlib.import_module(f"convssl.bench.{name}").add_arguments(p)


def run(args) -> int:
    return int(importlib.import_module(args._bench).run(args) or 0)
