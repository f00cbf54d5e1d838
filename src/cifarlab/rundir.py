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
        mlflow.json     with --mlflow: the MLflow run it logs to
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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cifarlab import fsio, plaindata
from cifarlab.diagnose import Diagnosis, diagnose, sizes_of
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
MLFLOW = "mlflow.json"  # the MLflow run this folder logs to (--mlflow): a resume goes on in it
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
    """Remove what a failed start wrote (its marker, config and a best.pt whose checkpoint did
    not fit on the disk) if no epoch was saved, and the folder itself if cifarlab made it: the
    folder is then as before, free for a new run, never a half run that can be neither resumed
    nor reused."""
    if (path / METRICS).exists() or (path / CHECKPOINT).exists():
        return
    for file in (path / MARKER, path / CONFIG, path / BEST, *path.glob(".*.tmp")):
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
    """Temp files that a write cut short by kill -9 left behind (fsio names them .NAME.*.tmp).
    Only under `lock`: another process's temp files are its writes in flight."""
    for stale in path.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def lock(path: Path) -> Iterator[None]:
    """One training per run folder: an exclusive lock on the folder, held while this process
    trains it, then the temp files that a killed writer left behind are removed (no writer is
    left to own them). A second process training the same run gets a one-line UserError at once.

    The lock is the operating system's (flock on the folder itself, so no file is made and a
    run from before this lock needs nothing): it goes when the process ends, however it ends,
    so kill -9 never leaves a stale lock. It holds between processes on one machine; on network
    file systems (NFS) flock may not reach other machines (docs/security.md). Without fcntl
    (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise UserError(f"cannot open the run folder {path}: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another process is training {path} right now; let it finish or stop "
                            "it (Ctrl-C) first: a run folder takes one training at a time") from None
        remove_stale_temp_files(path)
        yield
    finally:
        os.close(fd)


def output_folder(run: Path, name: str) -> Path:
    """RUN/NAME (report, explain, export, robustness, tensorboard), made if missing: where a
    command writes a run's outputs, replacing what is there. Only a real folder inside the run
    qualifies: a link, or anything that resolves outside the run, is refused, never written
    through, since a run folder may come from someone else, and RUN/report -> ~/Documents would
    make `report` replace the user's files there."""
    folder = run / name
    if not _inside(run, folder, missing_ok=True):
        what = "a link" if folder.is_symlink() else "not a folder inside the run"
        raise UserError(f"{folder} is {what}; cifarlab writes a run's {name} only into a real "
                        f"folder inside it, never through a link: move it away and run again")
    fsio.make_dir(folder)
    return folder


def found_output_folder(run: Path, name: str) -> Path | None:
    """RUN/NAME for a reader (report embeds explain/ and robustness/, serve shows report/): the
    folder if it is there and a real folder inside the run, else None (a link is ignored)."""
    folder = run / name
    return folder if _inside(run, folder, missing_ok=False) else None


def _inside(run: Path, folder: Path, missing_ok: bool) -> bool:
    if folder.is_symlink():
        return False
    if not folder.exists():
        return missing_ok
    return folder.is_dir() and folder.resolve().parent == run.resolve()


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


# metrics.csv holds ~90 bytes an epoch; a history is held as dicts, ~30x its bytes (an 18 MB file
# cost 560 MB before issue 22). A checkpoint holds at most ~13,000 epochs of history (its pickle
# is capped at 2 MB, checkpoint.py), so no run that cifarlab can resume has more than 20,000.
MAX_METRICS_BYTES = 4 << 20
MAX_EPOCHS = 20_000


def read_history(file: Path) -> History:
    """metrics.csv, checked: numbers in every column, whole epoch numbers, within the bounds."""
    text = plaindata.read_text(file, "metrics file", MAX_METRICS_BYTES)
    history = History()
    try:
        for row in csv.DictReader(io.StringIO(text, newline="")):
            if len(history) == MAX_EPOCHS:
                raise UserError(f"{file} holds more than {MAX_EPOCHS:,} epochs; cifarlab runs hold "
                                "fewer")
            values = {key: _number(row[key]) for key in METRIC_COLUMNS}
            epoch = values["epoch"]
            if not (math.isfinite(epoch) and epoch >= 1 and epoch == int(epoch)):
                raise UserError(f"{file}: row {len(history) + 1} has the epoch {row['epoch']!r}, "
                                "not an epoch number")
            values["epoch"] = int(epoch)  # a whole number of epochs
            history.append(values)
    except KeyError as exc:
        raise UserError(f"{file} has no column {exc}; is it from an older cifarlab?") from exc
    except (ValueError, TypeError, csv.Error) as exc:  # csv.Error: a field over 128 KB, a NUL
        raise UserError(f"cannot read {file}: {exc}") from exc
    if not history:
        raise UserError(f"{file} has no finished epoch yet")
    return history


def _number(text: str | None) -> float:
    if text is None:
        raise ValueError("a row is short of columns")
    return float(text) if text != "" else math.nan


# The fields of config.json (`info`) and summary.json that readers (compare, report, Run) use,
# with the types cifarlab writes: a run folder from someone else is checked before it is used.
INFO_FIELDS = {"config": dict, "classes": list[str], "versions": dict, "train_images": int,
              "val_images": int, "device": str, "threads": int, "command": str}
SUMMARY_FIELDS: dict[str, Any] = {
    "recipe": str, "model": str, "monitor": str, "device": str, "stopped_early": bool,
    "epochs": int, "final_epoch": int, "best_epoch": int | None, "best_weights_epoch": int | None,
    **dict.fromkeys(["train_loss", "train_acc", "train_acc_clean", "val_loss", "val_acc",
                     "best_val_acc", "best_weights_value", "val_acc_tta", "tta_seconds",
                     "seconds_per_epoch", "total_seconds", "wall_seconds", "temperature", "ece",
                     "ece_calibrated", "train_images_per_second", "peak_rss_mb"], float | None),
}


def config_fields() -> dict[str, Any]:
    """TrainConfig's fields and their types, as a stored config (config.json, a model file) holds
    them: `augment` as a mapping. Unknown keys (other versions) are left to those who read them."""
    from cifarlab.config import TYPES

    return {**TYPES, "augment": dict}


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
        summary = read_json(self.path / SUMMARY) or {}
        return plaindata.check_fields(summary, SUMMARY_FIELDS, str(self.path / SUMMARY))

    def diagnosis(self) -> Diagnosis:
        """The diagnosis of the history, judged with the sample sizes config.json records."""
        return diagnose(self.history, **sizes_of(self.info))


def read_json(file: Path) -> dict[str, Any] | None:
    """A JSON file of a run or search folder (plaindata: bounded, plain data), None if there is
    none or it holds no mapping."""
    if not file.is_file():
        return None
    value = plaindata.read(file, "file")
    return value if isinstance(value, dict) else None


def read_info(file: Path) -> dict[str, Any]:
    """config.json, checked: the fields readers use have the types cifarlab writes."""
    info = read_json(file) or {}
    plaindata.check_fields(info, INFO_FIELDS, str(file))
    plaindata.check_fields(info.get("config", {}), config_fields(), str(file), "config")
    return info


def read(path: str | os.PathLike[str]) -> RunFiles:
    """A run's config and metric history; a path that is not a run is a one-line UserError."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    if not (path / METRICS).is_file():
        raise UserError(f"{path} is not a cifarlab run: it has no {METRICS} "
                        "(run directories are written by cifarlab train)")
    return RunFiles(path, read_info(path / CONFIG), read_history(path / METRICS))
