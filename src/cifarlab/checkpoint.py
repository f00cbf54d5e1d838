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
                f"--model {name if is_spec(name) else 'FILE.py:Class'}")
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
