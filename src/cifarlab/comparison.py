"""`cifarlab compare`: one comparison table for any set of runs, and one chart of their curves.

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
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cifarlab import fsio, plots, rundir
from cifarlab.history import evaluated
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
        last, verdict, summary = run.history[-1], run.diagnosis(), run.summary
        scored = evaluated(run.history)  # epochs without evaluation have empty val cells
        measured_last = scored[-1] if scored else None
        best = max(scored, key=lambda r: r["val_acc"]) if scored else None
        clean = measured_last["train_acc_clean"] if measured_last else last["train_acc_clean"]
        rows.append({
            "run": run.run_name or name, "path": str(run.path), "model_recipe": run.model_recipe,
            "seed": run.config.get("seed"), "epochs": len(run.history),
            "train_acc": _number(last["train_acc"]), "train_acc_clean": _number(clean),
            "val_acc": measured_last["val_acc"] if measured_last else None,
            "best_val_acc": best["val_acc"] if best else None,
            "best_epoch": int(best["epoch"]) if best else None,
            "best_weights_epoch": summary.get("best_weights_epoch"),
            "val_acc_tta": summary.get("val_acc_tta", measured),
            "gap": _number(round(verdict.gap, 6)), "diagnosis": verdict.verdict,
            "seconds_per_epoch": round(float(np.mean([row["seconds"] for row in run.history])), 3),
            "robust_acc": _robust_acc(run),
        })
    return rows


def _number(value: float) -> float | None:
    """None for a number that was not measured (NaN in the history): JSON has no NaN."""
    return value if math.isfinite(value) else None


def _robust_acc(run: RunFiles) -> float | None:
    """Mean accuracy under the corruptions that `cifarlab robustness` measured, if it was run."""
    from cifarlab import robustness

    result = robustness.load(run.path / rundir.ROBUSTNESS)
    return None if result is None else round(result.mean_acc, 6)


# Dropped first when a text table is wider than the terminal: what a first look can do without.
# run, val acc, gap and diagnosis always stay.
DROP_ORDER = ("best_weights_epoch", "train_acc", "seed", "seconds_per_epoch", "best_epoch",
              "robust_acc", "val_acc_tta", "best_val_acc", "epochs", "model_recipe", "train_acc_clean")


def format_rows(rows: list[dict[str, Any]], fmt: str, width: int | None = None,
                wide_hint: str = "--wide") -> str:
    """The rows as an aligned text table, a Markdown table, or CSV / JSON with the numbers as measured.

    `width`: the text table's limit in characters (a terminal's width). A wider table first puts
    its headers on two lines, then leaves out columns in DROP_ORDER until it fits, and says which
    in a last line that names `wide_hint`, the way to see them all. None: no limit.
    """
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
    keys = [key for key, _, _ in columns]
    text = _text_table(headers, cells, numeric, two_lines=False)
    if width is None or _widest(text) <= width:
        return text
    hidden: list[str] = []
    shown = list(range(len(keys)))
    text = _text_table(headers, cells, numeric, two_lines=True)
    empty = [key for i, key in enumerate(keys) if all(row[i] == "-" for row in cells)]
    for key in [*empty, *DROP_ORDER]:  # columns with nothing in them go first
        if _widest(text) <= width:
            break
        if key not in keys or keys.index(key) not in shown:
            continue
        shown.remove(keys.index(key))
        hidden.append(headers[keys.index(key)])
        text = _text_table([headers[i] for i in shown], [[row[i] for i in shown] for row in cells],
                           [numeric[i] for i in shown], two_lines=True)
    if hidden:
        names = ", ".join(name.replace(" ", "\xa0") for name in hidden)  # a name stays on one line
        note = textwrap.fill(f"({len(hidden)} more columns with {wide_hint}: {names})", width)
        text += "\n" + note.replace("\xa0", " ")
    return text


def _text_table(headers: list[str], cells: list[list[str]], numeric: list[bool],
                two_lines: bool) -> str:
    """Aligned columns, numbers to the right; headers split over two lines where that narrows them."""
    head = [_split_header(h) if two_lines else (h, "") for h in headers]
    widths = [max(len(a), len(b), *(len(row[i]) for row in cells)) for i, (a, b) in enumerate(head)]
    head_lines = [[pair[0] for pair in head]]
    if any(b for _, b in head):
        head_lines = [[a if b else "" for a, b in head], [b or a for a, b in head]]
    lines = [[text.rjust(w) if n else text.ljust(w) for text, w, n in zip(line, widths, numeric, strict=True)]
             for line in [*head_lines, *cells]]
    return "\n".join("  ".join(line).rstrip() for line in lines)


def _split_header(header: str) -> tuple[str, str]:
    """A header on two lines at the space that makes its longer half shortest ("clean" /
    "train acc"); ("", header) stands for one line."""
    spaces = [i for i, c in enumerate(header) if c == " "]
    if not spaces:
        return header, ""
    cut = min(spaces, key=lambda i: max(i, len(header) - i - 1))
    return header[:cut], header[cut + 1:]


def _widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


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
