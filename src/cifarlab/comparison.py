"""`cifarlab compare`: the seed's comparison table for any set of runs, and one chart of their curves.

    cifarlab compare runs/seed-base runs/seed-robust runs/seed-bn
    cifarlab compare runs/* --format markdown --out docs/

Each row comes from the run's metrics.csv (the last epoch) and config.json, so an unfinished run
compares too. The diagnosis is the same rule `cifarlab report` applies (docs/diagnosis.md).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cifarlab import fsio, plots
from cifarlab.diagnose import diagnose
from cifarlab.rundir import RunFiles as Run

FORMATS = ("table", "markdown", "csv", "json")
# (key, header, is a number): the order of the columns in every format
COLUMNS = [
    ("run", "run", False), ("model_recipe", "model/recipe", False), ("epochs", "epochs", True),
    ("train_acc", "train acc (Keras)", True), ("train_acc_clean", "clean train acc", True),
    ("val_acc", "val acc", True), ("gap", "gap", True), ("diagnosis", "diagnosis", False),
    ("seconds_per_epoch", "s/epoch", True),
]


def compare_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run: its last epoch's accuracies, the clean-train-minus-val gap, the verdict."""
    rows = []
    for run in runs:
        last, verdict = run.history[-1], diagnose(run.history)
        rows.append({
            "run": run.name, "path": str(run.path),
            "model_recipe": run.model_recipe,
            "epochs": len(run.history), "train_acc": last["train_acc"],
            "train_acc_clean": last["train_acc_clean"], "val_acc": last["val_acc"],
            "gap": round(verdict.gap, 6), "diagnosis": verdict.verdict,
            "seconds_per_epoch": round(float(np.mean([row["seconds"] for row in run.history])), 3),
        })
    return rows


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """The rows as an aligned text table, a Markdown table, or CSV / JSON with the numbers as measured."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[key for key, _, _ in COLUMNS], extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue().rstrip("\n")
    cells = [[_cell(key, row[key]) for key, _, _ in COLUMNS] for row in rows]
    headers = [header for _, header, _ in COLUMNS]
    numeric = [number for _, _, number in COLUMNS]
    if fmt == "markdown":
        lines = [headers, ["---:" if n else "---" for n in numeric], *cells]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(text) for text in column) for column in zip(headers, *cells, strict=True)]
    lines = [[text.rjust(w) if n else text.ljust(w) for text, w, n in zip(line, widths, numeric, strict=True)]
             for line in [headers, *cells]]
    return "\n".join("  ".join(line).rstrip() for line in lines)


def _cell(key: str, value: Any) -> str:
    if key == "gap":
        return f"{value * 100:+.1f} pts"
    if key in ("train_acc", "train_acc_clean", "val_acc"):
        return f"{value:.1%}"
    if key == "seconds_per_epoch":
        return f"{value:.1f}"
    return str(value)


def chart(runs: list[Run]) -> Figure:
    """The val accuracy per epoch of every run, one line each."""
    return plots.val_curves([(run.label, run.history) for run in runs])


def write_chart(runs: list[Run], out_dir: Path) -> Path:
    """compare.png in `out_dir`: the val accuracy per epoch of every run. A compare.png that
    cifarlab did not write is never replaced (fsio.write_outputs)."""
    return write_chart_file(runs, out_dir / "compare.png")


def write_chart_file(runs: list[Run], path: Path) -> Path:
    """The chart as a PNG at `path`, which may replace only a file that cifarlab wrote."""
    fsio.write_outputs(path.parent, {path.name: plots.to_png(chart(runs))})
    return path


TRIAL_KEYS = ("val_acc", "val_acc_tta", "best_val_acc", "train_acc_clean", "epochs",
              "seconds_per_epoch", "wall_seconds")


def mean_std_table(summaries: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Mean and sample standard deviation over runs of each figure that all of them have."""
    table = {}
    for key in TRIAL_KEYS:
        values = [float(s[key]) for s in summaries if key in s]
        if len(values) == len(summaries) and values:
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            table[key] = (statistics.fmean(values), std)
    return table
