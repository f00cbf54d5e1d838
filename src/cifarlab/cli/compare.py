"""`cifarlab compare`: the seed's comparison table for any set of runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cifarlab.cli import options

FORMATS = ("table", "markdown", "csv", "json")


def register(commands: Any) -> None:
    c = commands.add_parser(
        "compare", help="one table of several runs (and a chart of their val curves on request)",
        description="Compare runs: model/recipe, seed, epochs, train / clean train / val accuracy, "
                    "the best epoch and its val accuracy, best.pt's epoch, val accuracy with TTA, "
                    "gap, diagnosis, seconds per epoch. Runs are named by the shortest end of their "
                    "path that tells them apart; folders that are not runs are skipped with a note.",
        epilog="Example: cifarlab compare runs/* --format markdown --chart val.png")
    c.add_argument("runs", metavar="RUN_DIR", nargs="+", help="run directories written by cifarlab train")
    c.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    options.json_flag(c, "the same as --format json")
    c.add_argument("--chart", metavar="FILE.png",
                   help="also write the val accuracy per epoch of every run to FILE.png "
                        "(default: no chart)")
    options.tta(c, "measure val accuracy with test-time augmentation (final weights) for runs whose "
                   "summary.json has none; the fast recipes record it while training")
    options.device(c)
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import cifarlab as cl
    from cifarlab.comparison import write_chart_file
    from cifarlab.errors import warn

    comparison = cl.compare(args.runs, skip_non_runs=True, tta=args.tta, device=args.device)
    for path in comparison.skipped:
        warn(f"skipped {path}: not a cifarlab run")
    print(comparison.format("json" if args.json else args.format))
    if args.chart:
        write_chart_file(comparison.runs, Path(args.chart))
        print(f"wrote {args.chart} (val accuracy per epoch)", file=sys.stderr)
    return 0
