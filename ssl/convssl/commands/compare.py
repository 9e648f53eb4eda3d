"""``convssl compare RUN_DIR... --out DIR``: one Markdown table and PNG plots over runs."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by convssl pretrain")
    parser.add_argument("--out", required=True, help="folder for compare.md and the PNG plots")


def run(args) -> int:
    from convssl.eval.compare import compare_runs

    result = compare_runs(args.runs, args.out)
    for warning in result["warnings"]:
        print(f"convssl compare: warning: {warning}", file=sys.stderr)
    print(result["markdown"])
    return 0
