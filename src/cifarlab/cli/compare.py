"""`cifarlab compare`: the seed's comparison table for any set of runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

FORMATS = ("table", "markdown", "csv", "json")


def register(commands: Any) -> None:
    c = commands.add_parser(
        "compare", help="one table of several runs (and a chart of their val curves on request)",
        description="Compare runs: recipe, epochs, train / clean train / val accuracy, gap, "
                    "diagnosis, seconds per epoch. Folders that are not runs are skipped with a note.")
    c.add_argument("runs", metavar="RUN_DIR", nargs="+", help="run directories written by cifarlab train")
    c.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    c.add_argument("--chart", metavar="FILE.png",
                   help="also write the val accuracy per epoch of every run to FILE.png")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import cifarlab.api as cl
    from cifarlab.comparison import write_chart_file
    from cifarlab.errors import warn

    comparison = cl.compare(args.runs, skip_non_runs=True)
    for path in comparison.skipped:
        warn(f"skipped {path}: not a cifarlab run")
    print(comparison.format(args.format))
    if args.chart:
        write_chart_file(comparison.runs, Path(args.chart))
        print(f"wrote {args.chart} (val accuracy per epoch)", file=sys.stderr)
    return 0
