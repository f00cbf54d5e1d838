"""`cifarlab compare`: the seed's comparison table for any set of runs, and one chart of their curves.

    cifarlab compare runs/seed-base runs/seed-robust runs/seed-bn
    cifarlab compare runs/* --format markdown --chart val.png

Each row comes from the run's metrics.csv (the last epoch) and config.json, so an unfinished run
compares too. The diagnosis is the same rule `cifarlab report` applies (docs/diagnosis.md).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cifarlab import fsio, plots, rundir
from cifarlab.diagnose import diagnose
from cifarlab.rundir import RunFiles

FORMATS = ("table", "markdown", "csv", "json")
# (key, header, is a number): the order of the columns in every format
COLUMNS = [
    ("run", "run", False), ("model_recipe", "model/recipe", False), ("seed", "seed", True),
    ("epochs", "epochs", True), ("train_acc", "train acc (Keras)", True),
    ("train_acc_clean", "clean train acc", True), ("val_acc", "val acc", True),
    ("best_val_acc", "best val acc", True), ("best_epoch", "@ epoch", True),
    ("best_weights_epoch", "best.pt epoch", True), ("val_acc_tta", "val acc TTA", True),
    ("gap", "gap", True), ("diagnosis", "diagnosis", False), ("seconds_per_epoch", "s/epoch", True),
    ("robust_acc", "corrupted acc", True),
]
PERCENT = ("train_acc", "train_acc_clean", "val_acc", "best_val_acc", "val_acc_tta", "robust_acc")
OPTIONAL = ("robust_acc",)  # shown only when some run has it (`cifarlab robustness` was run)


def distinct_names(paths: list[Path]) -> list[str]:
    """Each run's shortest trailing part of its path that no other run ends with: `seed-0` when
    that is unique, `trials-a/seed-0` and `trials-b/seed-0` when two runs share a folder name."""
    parts = [path.resolve().parts for path in paths]
    names = []
    for i, mine in enumerate(parts):
        others = [p for j, p in enumerate(parts) if j != i and p != mine]
        depth = 1
        while depth < len(mine) and any(p[-depth:] == mine[-depth:] for p in others):
            depth += 1
        names.append("/".join(mine[-depth:]))
    return names


def compare_rows(runs: list[RunFiles], tta: list[float | None] | None = None) -> list[dict[str, Any]]:
    """One row per run: its last epoch's accuracies, the best epoch, TTA, the clean-train-minus-val
    gap and the verdict. A number that was not measured (no validation, no TTA) is None.

    `tta`: val accuracies with test-time augmentation measured now (`compare --tta`), for the
    runs whose summary.json does not already hold one.
    """
    rows = []
    for run, name, measured in zip(runs, distinct_names([r.path for r in runs]),
                                   tta or [None] * len(runs), strict=True):
        last, verdict, summary = run.history[-1], diagnose(run.history), run.summary
        has_val = math.isfinite(last["val_acc"])
        best = max(run.history, key=lambda r: r["val_acc"]) if has_val else None
        rows.append({
            "run": run.run_name or name, "path": str(run.path), "model_recipe": run.model_recipe,
            "seed": run.config.get("seed"), "epochs": len(run.history),
            "train_acc": last["train_acc"], "train_acc_clean": last["train_acc_clean"],
            "val_acc": last["val_acc"] if has_val else None,
            "best_val_acc": best["val_acc"] if best else None,
            "best_epoch": int(best["epoch"]) if best else None,
            "best_weights_epoch": summary.get("best_weights_epoch"),
            "val_acc_tta": summary.get("val_acc_tta", measured),
            "gap": round(verdict.gap, 6) if has_val else None, "diagnosis": verdict.verdict,
            "seconds_per_epoch": round(float(np.mean([row["seconds"] for row in run.history])), 3),
            "robust_acc": _robust_acc(run),
        })
    return rows


def _robust_acc(run: RunFiles) -> float | None:
    """Mean accuracy under the corruptions that `cifarlab robustness` measured, if it was run."""
    from cifarlab import robustness

    result = robustness.load(run.path / rundir.ROBUSTNESS)
    return None if result is None else round(result.mean_acc, 6)


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """The rows as an aligned text table, a Markdown table, or CSV / JSON with the numbers as measured."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    columns = [c for c in COLUMNS
               if c[0] not in OPTIONAL or any(row.get(c[0]) is not None for row in rows)]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[key for key, _, _ in columns], extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue().rstrip("\n")
    cells = [[_cell(key, row[key]) for key, _, _ in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    numeric = [number for _, _, number in columns]
    if fmt == "markdown":
        lines = [headers, ["---:" if n else "---" for n in numeric], *cells]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(text) for text in column) for column in zip(headers, *cells, strict=True)]
    lines = [[text.rjust(w) if n else text.ljust(w) for text, w, n in zip(line, widths, numeric, strict=True)]
             for line in [headers, *cells]]
    return "\n".join("  ".join(line).rstrip() for line in lines)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "gap":
        return f"{value * 100:+.1f} pts"
    if key in PERCENT:
        return f"{value:.1%}"
    if key == "seconds_per_epoch":
        return f"{value:.1f}"
    return str(value)


def chart(runs: list[RunFiles]) -> Figure:
    """The val accuracy per epoch of every run, one line each."""
    return plots.val_curves([(run.label, run.history) for run in runs])


def write_chart(runs: list[RunFiles], out_dir: Path) -> Path:
    """compare.png in `out_dir`: the val accuracy per epoch of every run. A compare.png that
    cifarlab did not write is never replaced (fsio.write_outputs)."""
    return write_chart_file(runs, out_dir / "compare.png")


def write_chart_file(runs: list[RunFiles], path: Path) -> Path:
    """The chart as a PNG at `path`, which may replace only a file that cifarlab wrote."""
    fsio.write_outputs(path.parent, {path.name: plots.to_png(chart(runs))})
    return path


TRIAL_KEYS = ("val_acc", "val_acc_tta", "best_val_acc", "train_acc_clean", "epochs",
              "seconds_per_epoch", "wall_seconds")


def mean_std_table(summaries: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Mean and sample standard deviation over runs of each figure that all of them have."""
    table = {}
    for key in TRIAL_KEYS:
        values = [float(s[key]) for s in summaries if s.get(key) is not None]
        if len(values) == len(summaries) and values:
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            table[key] = (statistics.fmean(values), std)
    return table
