"""Model files and resumable checkpoints, each one plain dict saved atomically.

`model.pt` holds what using a model needs: weights, architecture name, class names and the
normalisation. `checkpoint.pt` holds what resuming needs on top: optimizer state, counters,
random-number-generator states and the metric history. Both hold only tensors, numbers, strings,
lists and dicts, so they load with `torch.load(weights_only=True)`, which never runs pickled code.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab import fsio, rundir
from cifarlab.errors import UserError
from cifarlab.networks import MODELS, Classifier, create_model, is_spec, spec_of

MODEL_FORMAT = "cifarlab-model"
CHECKPOINT_FORMAT = "cifarlab-checkpoint"


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
        raise UserError(f"{path} is not a readable cifarlab file ({_reason(exc)})") from exc
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        raise UserError(f"{path} is not a cifarlab {expected_format.split('-')[1]} file")
    return obj


def _reason(exc: Exception) -> str:
    """The first line of torch's message, without its advice to unpickle with weights_only=False
    (which would run code from the file: the opposite of what a stranger's file deserves)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if "weights_only" in str(exc):
        text = "it holds objects that only code execution could load; refused"
    return text[:200]


def find_model_file(run_or_ckpt: str | Path, weights: str = "best") -> Path:
    """A run directory (its best.pt or model.pt, see rundir.weights_file) or a model file."""
    path = Path(run_or_ckpt)
    if path.is_dir():
        return rundir.weights_file(path, weights)
    if not path.exists():
        raise UserError(f"model not found: {path} (give a run directory or its model.pt)")
    return path


def model_record(model: Classifier, model_name: str, classes: list[str], config: dict[str, Any],
                 metrics: dict[str, Any], epoch: int, weights: str) -> dict[str, Any]:
    """What using a model needs: weights, which network (name or import spec, and its kwargs),
    class names, normalisation, and which epoch these weights are from."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {
        "format": MODEL_FORMAT, "version": 2, "model": model_name,
        "model_kwargs": dict(config.get("model_kwargs") or {}), "classes": list(classes),
        "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(),
        "state_dict": state, "config": config, "metrics": metrics, "epoch": epoch,
        "weights": weights,
    }


ModelArg = str | Callable[..., nn.Module] | nn.Module | None


def build_model(record: dict[str, Any], model: ModelArg = None, where: object = "") -> Classifier:
    """The Classifier a model record (or checkpoint) describes, with its weights.

    A registered name is built from the registry. Anything else (a user's model) is built only
    from `model`, which the caller passes again (`--model FILE.py:Class`, `cl.load(..., model=Net)`):
    a file never makes us import the code it names.
    """
    name = str(record.get("model", "?"))
    kwargs = dict(record.get("model_kwargs") or record.get("config", {}).get("model_kwargs") or {})
    if model is None:
        if name not in MODELS:
            raise UserError(
                f"{where} holds the model '{name}', which is not registered here; pass it again: "
                f"--model {name if is_spec(name) else 'FILE.py:Class'} (CLI) or model=... (Python)")
        model = name
    try:
        classes = record["classes"]
        built = create_model(model, len(classes), record["mean"], record["std"], kwargs)
        built.load_state_dict(record["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        named = model if isinstance(model, str) else spec_of(model)
        raise UserError(f"{where} does not match the model {named!r}: {first}") from exc
    return built


def load_model(run_or_ckpt: str | Path, model: ModelArg = None,
               weights: str = "best") -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the model from a run directory or model file; returns (model in eval mode, record)."""
    path = find_model_file(run_or_ckpt, weights)
    record = load(path, MODEL_FORMAT)
    built = build_model(record, model, where=path)
    built.eval()
    return built, record
