"""The run directory: its layout, its creation, and reading it back. The one module that spells
its file names (timm's summary.csv has one writer; so does everything here).

    runs/base-20261130-101500/
        .cifarlab-run   marker: this folder belongs to cifarlab (written first, atomically)
        config.json     the resolved settings (`cifarlab train --config` reruns them), versions
        metrics.csv     one row per epoch: the run's ledger, everything downstream reads it
        checkpoint.pt   model + optimizer + counters: `--resume` continues exactly
        best.pt         the weights of the best epoch by `monitor` (val_acc by default)
        model.pt        the final weights
        summary.json    final figures, naming both the best and the final epoch
        report/ export/ explain/ robustness/ tensorboard/   written by those commands

    >>> from cifarlab import rundir
    >>> rundir.METRICS
    'metrics.csv'
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cifarlab import fsio
from cifarlab.errors import UserError
from cifarlab.history import History

MARKER = ".cifarlab-run"
CONFIG = "config.json"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
FINAL = "model.pt"
BEST = "best.pt"
REPORT = "report"
EXPORT = "export"
EXPLAIN = "explain"
ROBUSTNESS = "robustness"
TENSORBOARD = "tensorboard"
WEIGHTS = ("best", "final")
DEFAULT_ROOT = Path("runs")

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "train_acc_clean", "val_loss", "val_acc",
                  "lr", "seconds", "train_seconds"]


def is_run(path: Path) -> bool:
    """A folder cifarlab wrote: its marker, or (runs from before the marker) a checkpoint or ledger."""
    return path.is_dir() and any((path / name).exists() for name in (MARKER, CHECKPOINT, METRICS))


def create(out: str | os.PathLike[str] | None, recipe: str, root: Path = DEFAULT_ROOT) -> Path:
    """Make the run folder before any data is loaded, so two runs can never share one.

    With `out`: it may not exist yet, or be empty; a folder with a run in it needs --resume, and
    a folder with other files is refused rather than overwritten. Without: runs/<recipe>-<time>,
    created with mkdir (no exist_ok) and a -2, -3 ... suffix if another run took the name first.
    The marker file is created exclusively (O_EXCL), which settles a race on the same --out.
    """
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} is a file, not a folder")
        if path.is_dir():
            if is_run(path):
                raise UserError(f"{path} already holds a run; continue it with --resume {path}, "
                                "or choose another --out")
            if any(path.iterdir()):
                raise UserError(f"--out {path} is a folder with other files in it; cifarlab writes "
                                "runs only into new or empty folders")
        fsio.make_dir(path)
        _claim(path)
        return path
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    fsio.make_dir(root)
    for attempt in range(1, 1000):
        path = root / (f"{recipe}-{stamp}" if attempt == 1 else f"{recipe}-{stamp}-{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"cannot create the folder {path}: {exc.strerror or exc}") from exc
        _claim(path)
        return path
    raise UserError(f"cannot find a free run folder name in {root}")


def stem(recipe: str, model: str, name: str | None = None) -> str:
    """What a new run folder is named after: the run's name (letters, digits, '.', '_' and '-'
    kept, the rest '-'), else the recipe, or the model when it is not the recipe's own
    ("SmallVGG" for "__main__:SmallVGG" or "nets.py:SmallVGG"), which says more than "base"."""
    from cifarlab.config import RECIPES

    if name:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
        if slug:
            return slug[:60]
    if ":" in model:
        return model.rsplit(":", 1)[-1]
    own = RECIPES[recipe].settings.get("model") if recipe in RECIPES else None
    return recipe if model == own else model


def _claim(path: Path) -> None:
    try:
        fd = os.open(path / MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        raise UserError(f"{path} was just claimed by another run; choose another --out") from None
    except OSError as exc:
        raise UserError(f"cannot write in {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps({"created": datetime.now().isoformat(timespec="seconds"),
                                 "pid": os.getpid()}) + "\n")


def discard_if_empty(path: Path, remove_folder: bool = True) -> None:
    """Remove what a failed start wrote (its marker and config) if no epoch was saved, and the
    folder itself if cifarlab made it."""
    if (path / METRICS).exists() or (path / CHECKPOINT).exists():
        return
    for file in (path / MARKER, path / CONFIG, *path.glob(".*.tmp")):
        with contextlib.suppress(OSError):
            file.unlink()
    if remove_folder:
        with contextlib.suppress(OSError):
            path.rmdir()


def latest(root: Path = DEFAULT_ROOT) -> Path:
    runs = sorted((p for p in root.glob("*") if (p / CHECKPOINT).exists()),
                  key=lambda p: (p / CHECKPOINT).stat().st_mtime)
    if not runs:
        raise UserError(f"no run to resume in {root}/; pass the run directory: --resume DIR")
    return runs[-1]


def remove_stale_temp_files(path: Path) -> None:
    """Temp files that a write cut short by kill -9 left behind (fsio names them .NAME.*.tmp)."""
    for stale in path.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def weights_file(path: Path, weights: str = "best") -> Path:
    """best.pt or model.pt of a run; `best` falls back to the final weights for runs without
    best.pt (older runs, or --val-fraction 0), which the caller can see from the name."""
    if weights not in WEIGHTS:
        raise UserError(f"--weights must be best or final, got {weights!r}")
    if weights == "best" and (path / BEST).is_file():
        return path / BEST
    if (path / FINAL).is_file():
        return path / FINAL
    raise UserError(f"{path} has no {FINAL} (is the run finished? resume it with: "
                    f"cifarlab train --resume {path})")


def metrics_csv(history: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    """6 significant digits; an empty cell for a number that was not measured (no val images)."""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return value


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    fsio.write_text(path / METRICS, metrics_csv(history))


def read_history(file: Path) -> History:
    try:
        with file.open(newline="") as handle:
            history = History({key: _number(row[key]) for key in METRIC_COLUMNS}
                              for row in csv.DictReader(handle))
        for row in history:
            row["epoch"] = int(row["epoch"])  # a whole number of epochs; NaN/inf: ValueError
    except KeyError as exc:
        raise UserError(f"{file} has no column {exc}; is it from an older cifarlab?") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from exc
    if not history:
        raise UserError(f"{file} has no finished epoch yet")
    return history


def _number(text: str | None) -> float:
    if text is None:
        raise ValueError("a row is short of columns")
    return float(text) if text != "" else math.nan


@dataclass
class RunFiles:
    """What a run directory holds on disk: config.json (`info`) and metrics.csv (`history`)."""

    path: Path
    info: dict[str, Any]  # config.json: {"config": {...}, "classes": [...], "versions": ...}
    history: History  # metrics.csv, one row per epoch

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.info.get("config", {}))

    @property
    def model_recipe(self) -> str:
        """"base" where model and recipe share a name, "model/recipe" ("base_dropout/robust") for
        a recipe's model, and your model's class name ("MyNet") for your own."""
        recipe, model = str(self.config.get("recipe", "?")), str(self.config.get("model", "?"))
        if ":" in model:
            return model.rsplit(":", 1)[-1]
        return recipe if recipe == model else f"{model}/{recipe}"

    @property
    def run_name(self) -> str | None:
        """The name the run was given (`name=`, --name), if any."""
        name = self.config.get("name")
        return name if isinstance(name, str) and name else None

    @property
    def label(self) -> str:
        return f"{self.run_name or self.name} ({self.model_recipe})"

    @property
    def summary(self) -> dict[str, Any]:
        return read_json(self.path / SUMMARY) or {}


def read_json(file: Path) -> dict[str, Any] | None:
    if not file.is_file():
        return None
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from exc
    return value if isinstance(value, dict) else None


def read(path: str | os.PathLike[str]) -> RunFiles:
    """A run's config and metric history; a path that is not a run is a one-line UserError."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    if not (path / METRICS).is_file():
        raise UserError(f"{path} is not a cifarlab run: it has no {METRICS} "
                        "(run directories are written by cifarlab train)")
    return RunFiles(path, read_json(path / CONFIG) or {}, read_history(path / METRICS))
