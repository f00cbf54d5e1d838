"""The `cifarlab report` and `cifarlab compare` sub-commands.

    cifarlab report runs/seed-base                      # -> runs/seed-base/report/report.html
    cifarlab report runs/seed-base runs/seed-bn --out /tmp/reports   # -> /tmp/reports/<run>/
    cifarlab compare runs/seed-base runs/seed-robust runs/seed-bn --format markdown --out /tmp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cifarlab.errors import UserError, warn


def register(commands: Any) -> None:
    """Add the report/compare sub-commands to the CLI's sub-parsers."""
    from cifarlab.compare import FORMATS

    r = commands.add_parser(
        "report", help="curves, diagnosis, confusion matrix, calibration, samples: one HTML page per run",
        description="Write a report for each run into RUN_DIR/report/ (or --out): PNG plots, "
                    "metrics.json, confusion.json and a self-contained report.html.")
    r.add_argument("runs", metavar="RUN_DIR", nargs="+", help="run directories written by cifarlab train")
    r.add_argument("--data", metavar="SRC", help="data to evaluate on (default: the data the run trained on)")
    r.add_argument("--split", choices=["val", "test"], default="val",
                   help="split to evaluate the model on (default: val, the run's own held-out images)")
    r.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder (default: RUN_DIR/report; with several runs: DIR/<run name>)")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to run the model (default: auto = cuda if available)")
    r.set_defaults(func=cmd_report)

    c = commands.add_parser(
        "compare", help="one table of several runs, and their val accuracy curves in compare.png",
        description="Compare runs: recipe, epochs, train / clean train / val accuracy, gap, diagnosis, "
                    "seconds per epoch. Also writes compare.png (val accuracy per epoch of every run).")
    c.add_argument("runs", metavar="RUN_DIR", nargs="+", help="run directories written by cifarlab train")
    c.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    c.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                   help="folder for compare.png (default: the current directory)")
    c.set_defaults(func=cmd_compare)


def cmd_report(args: argparse.Namespace) -> int:
    from cifarlab.report import read_run, write_report

    runs = [read_run(path) for path in args.runs]  # every path checked before any work starts
    names = [run.name for run in runs]
    if args.out is not None and len(runs) > 1 and len(set(names)) < len(names):
        raise UserError("several runs share a directory name, so --out DIR/<run name> would mix "
                        "them; report them one at a time")
    for run in runs:
        out = args.out / run.name if args.out is not None and len(runs) > 1 else args.out
        report = write_report(run, out, data=args.data, split=args.split, device=args.device)
        print(f"{run.path}:")
        for line in report.diagnosis.lines():
            print(f"  {line}")
        if report.evaluation is not None:
            ev = report.evaluation
            print(f"  {ev['split']}: accuracy {ev['accuracy']:.4f}, macro F1 {ev['macro_avg']['f1']:.4f}, "
                  f"ECE {ev['ece']:.4f} ({ev['images']} images)")
        if report.skipped:
            warn(report.skipped)
        print(f"  wrote {report.out / 'report.html'} (and {', '.join(report.files[:-1])})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from cifarlab.compare import compare_rows, format_rows, write_chart
    from cifarlab.report import read_run

    runs = [read_run(path) for path in args.runs]
    print(format_rows(compare_rows(runs), args.format))
    path = write_chart(runs, args.out)
    print(f"wrote {path} (val accuracy per epoch)", file=sys.stderr)
    return 0
