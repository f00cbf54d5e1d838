"""Model files and resumable checkpoints, each one plain dict saved atomically.

`model.pt` holds what using a model needs: weights, architecture name, class names and the
normalisation. `checkpoint.pt` holds what resuming needs on top: optimizer state, counters,
random-number-generator states and the metric history. Both hold only tensors, numbers, strings,
lists and dicts, so they load with `torch.load(weights_only=True)`, which never runs pickled code.
"""

from __future__ import annotations

import io
import warnings
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
