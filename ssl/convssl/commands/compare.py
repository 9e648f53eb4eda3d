"""``convssl compare RUN_DIR... --out DIR [--baseline PROBE]``: one Markdown table and PNG plots over runs.

Every probe result shows its 95% interval, and the gain over the probe's own first
baseline (``convssl probe --baseline``) at its best stage. ``--baseline`` pairs every
probed run with another probe report (e.g. ``convssl probe --encoder ... --out rand``, or
another run) image by image: gains per stage with paired intervals and a verdict.
"""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by convssl pretrain")
    parser.add_argument("--out", required=True, help="folder for compare.md and the PNG plots")
    parser.add_argument("--baseline", default=None, metavar="PROBE",
                        help="a probe report.json, its folder, or a run directory with a probe: every probed run's "
                             "gain over it per stage, paired over the same val images, with a verdict")


def run(args) -> int:
    from convssl.eval.compare import compare_runs

    result = compare_runs(args.runs, args.out, baseline=args.baseline)
    for warning in result["warnings"]:
        print(f"convssl compare: warning: {warning}", file=sys.stderr)
    print(result["markdown"])
    return 0
