"""`cifarlab report`: curves, diagnosis, confusion matrix, calibration and samples, one HTML page
per run (report.py does the work)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cifarlab.cli import options
from cifarlab.errors import UserError, warn


def register(commands: Any) -> None:
    r = commands.add_parser(
        "report", help="curves, diagnosis, confusion matrix, calibration, samples: one HTML page per run",
        description="Write a report for each run into RUN_DIR/report/ (or --out): PNG plots, "
                    "metrics.json, confusion.json and a self-contained report.html.")
    r.add_argument("runs", metavar="RUN_DIR", nargs="+", help="run directories written by cifarlab train")
    options.data(r, "the data the run trained on")
    options.split(r)
    options.tta(r)
    options.weights(r)
    options.model(r)
    r.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder; with several runs, DIR/<run name> (default: RUN_DIR/report)")
    options.device(r)
    options.json_flag(r, "print a JSON list, one object per run: where the report is, the diagnosis "
                         "and the scores")
    options.quiet(r)
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import cifarlab as cl

    runs = [cl.load(path, model=args.model) for path in args.runs]  # all checked before any work
    names = [run.path.resolve().name for run in runs]
    if args.out is not None and len(runs) > 1 and len(set(names)) < len(names):
        raise UserError("several runs share a directory name, so --out DIR/<run name> would mix "
                        "them; report them one at a time")
    results = []
    for run, name in zip(runs, names, strict=True):
        out = args.out / name if args.out is not None and len(runs) > 1 else args.out
        report = run.report(out, data=args.data, split=args.split, device=args.device,
                            quiet=args.quiet or args.json, weights=args.weights, tta=args.tta)
        if report.skipped:
            warn(report.skipped)
        if args.json:
            evaluation = {k: v for k, v in (report.evaluation or {}).items()
                          if k not in ("confusion", "calibration")}
            results.append({"run": str(run.path), "report": str(report.out / "report.html"),
                            "diagnosis": report.diagnosis.to_dict(), "evaluation": evaluation or None,
                            "skipped": report.skipped})
            continue
        print(f"{run.path}:")
        for line in report.diagnosis.lines():
            print(f"  {line}")
        if report.evaluation is not None:
            ev = report.evaluation
            print(f"  {ev['split']}: accuracy {ev['accuracy']:.4f}, macro F1 {ev['macro_avg']['f1']:.4f}, "
                  f"ECE {ev['ece']:.4f} ({ev['images']} images, {ev['weights']} weights)")
        print(f"  wrote {report.out / 'report.html'} (and {', '.join(report.files[:-1])})")
    if args.json:
        print(json.dumps(results))
    return 0
