"""`cifarlab compare`: one table of any set of runs, fitted to the terminal (--wide: every column)."""

from __future__ import annotations

import argparse
import shutil
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
    c.add_argument("--wide", action="store_true",
                   help="every column, however wide the table (default: on a terminal, the table "
                        "fits its width and a last line names the columns left out)")
    options.json_flag(c, "the same as --format json")
    c.add_argument("--chart", metavar="FILE.png",
                   help="also write the val accuracy per epoch of every run to FILE.png; beside "
                        "it, .cifarlab-outputs.json records what cifarlab wrote there, so that a "
                        "file of yours is never replaced (default: no chart)")
    options.tta(c, "measure val accuracy with test-time augmentation (final weights) for runs whose "
                   "summary.json has none; the fast recipes record it while training")
    options.device(c)
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import cifarlab as cl
    from cifarlab.comparison import format_rows, write_chart_file
    from cifarlab.errors import warn

    comparison = cl.compare(args.runs, skip_non_runs=True, tta=args.tta, device=args.device)
    for path in comparison.skipped:
        warn(f"skipped {path}: not a cifarlab run")
    fmt = "json" if args.json else args.format
    if fmt == "table" and not args.wide and sys.stdout.isatty():  # a pipe or file gets every column
        print(format_rows(comparison.rows, fmt, shutil.get_terminal_size().columns))
    else:
        print(comparison.format(fmt, wide=True))
    if args.chart:
        write_chart_file(comparison.runs, Path(args.chart))
        print(f"wrote {args.chart} (val accuracy per epoch)", file=sys.stderr)
    return 0
