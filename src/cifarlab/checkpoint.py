"""Model files and resumable checkpoints, each one plain dict saved atomically.

`model.pt` holds what using a model needs: weights, architecture name, class names and the
normalisation. `checkpoint.pt` holds what resuming needs on top: optimizer state, counters,
random-number-generator states and the metric history. Both hold only tensors, numbers, strings,
lists and dicts, so they load with `torch.load(weights_only=True)`, which never runs pickled code.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from cifarlab import fsio
from cifarlab.errors import UserError
from cifarlab.models import Classifier, create_model

MODEL_FORMAT = "cifarlab-model"
CHECKPOINT_FORMAT = "cifarlab-checkpoint"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"


# What a model file's zip may declare, checked before torch.load, which allocates each record's
# declared size (and inflates it) before it checks anything. torch.save stores records
# uncompressed, one per tensor plus six: a checkpoint of the largest net has a few hundred.
MAX_RECORDS = 10_000
MAX_EXPANSION = 10  # a record may declare at most 10x its stored bytes (torch.save: exactly 1x)
# data.pkl is unpickled object by object (~75 bytes of memory per byte of pickle when it is a
# flood of empty lists); a real one is 2-5 KB plus ~150 bytes of metric history per epoch.
MAX_PICKLE_BYTES = 2 << 20


def _check_zip(path: Path) -> None:
    """Refuse a model file whose zip would make torch.load allocate more than the file holds: a
    307 KB file declaring a deflated 300 MB record cost 301 MB before any error. The sizes come
    from the zip's central directory, which zipfile reads without decompressing anything."""
    unreadable = f"{path} is not a readable cifarlab file"
    try:
        if not zipfile.is_zipfile(path):  # torch.save writes zips; older formats read unchecked
            raise UserError(f"{unreadable} (not a zip archive, as torch.save writes)")
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except UserError:
        raise
    except Exception as exc:  # zipfile raises many types on a damaged directory (NotImplementedError...)
        raise UserError(f"{unreadable} ({exc or type(exc).__name__})") from exc
    if len(records) > MAX_RECORDS:
        raise UserError(f"{unreadable} ({len(records):,} records; cifarlab files have a few hundred)")
    for record in records:
        name = record.filename
        if record.file_size > MAX_EXPANSION * max(record.compress_size, 1):
            raise UserError(f"{unreadable} (record {name} declares {record.file_size:,} bytes "
                            f"stored in {record.compress_size:,})")
        if name.rsplit("/", 1)[-1] == "data.pkl" and record.file_size > MAX_PICKLE_BYTES:
            raise UserError(f"{unreadable} (its pickle {name} is {record.file_size:,} bytes; "
                            f"cifarlab writes less than {MAX_PICKLE_BYTES >> 20} MB)")


def save(path: Path, obj: dict[str, Any]) -> None:
    """Serialise in memory, then write atomically: torch.save turns a failed write (disk full)
    into an opaque RuntimeError, while a plain write reports it as one clear UserError."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    fsio.write_bytes(path, buffer.getbuffer())


def load(path: Path, expected_format: str) -> dict[str, Any]:
    """Load a cifarlab file safely; anything else is a clear error, never a code execution."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    _check_zip(path)
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols; we say more
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a damaged file: all mean "bad file"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable cifarlab file ({first_line[:200]})") from exc
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        raise UserError(f"{path} is not a cifarlab {expected_format.split('-')[1]} file")
    return obj


def find_model_file(run_or_ckpt: str | Path) -> Path:
    """Accept a run directory or a model file."""
    path = Path(run_or_ckpt)
    if path.is_dir():
        path = path / MODEL_FILE
        if not path.exists():
            raise UserError(f"{path.parent} has no {MODEL_FILE} (is the run finished? "
                            "resume it with: cifarlab train --resume DIR)")
    return path


def model_record(model: Classifier, model_name: str, classes: list[str], config: dict[str, Any],
                 metrics: dict[str, Any]) -> dict[str, Any]:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {
        "format": MODEL_FORMAT, "version": 1, "model": model_name, "classes": list(classes),
        "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(),
        "state_dict": state, "config": config, "metrics": metrics,
    }


def load_model(run_or_ckpt: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the model from a run directory or `model.pt`; returns (model in eval mode, record)."""
    path = find_model_file(run_or_ckpt)
    record = load(path, MODEL_FORMAT)
    try:
        model = create_model(record["model"], len(record["classes"]), record["mean"], record["std"])
        model.load_state_dict(record["state_dict"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise UserError(f"{path} does not match a known cifarlab model: {exc}") from exc
    model.eval()
    return model, record
