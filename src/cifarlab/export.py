"""Export a trained model to ONNX or TorchScript, preprocessing and softmax folded in.

    cifarlab export runs/base-20261122-101500 --format onnx
    cifarlab export runs/base-20261122-101500/model.pt --format torchscript --out cat-dog.pt

The exported graph takes what an image decoder gives: RGB pixels, NCHW, 32x32, any batch size.
ONNX takes uint8 only, so a float array scaled to 0..1 (or already normalised), the classic
deployment bug, is refused with a type error instead of silently predicting nonsense; TorchScript
also takes float in 0..255. It returns two outputs, `probs` (softmax) and `logits`, so a caller
shows probabilities without re-implementing softmax and calibration or ensembling still has logits.
The class names go into a JSON sidecar (`FILE.json`) and into the file's own metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab import __version__, checkpoint, fsio
from cifarlab.errors import UserError
from cifarlab.extras import require_extra

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
EXPORT_FORMAT = "cifarlab-export"
INPUT_NAME = "images"
OUTPUT_NAMES = ["probs", "logits"]
EXPORT_DIR = "export"  # default output folder, inside the run directory


class Exportable(nn.Module):
    """The Classifier (which normalises raw pixels itself) plus softmax: (probs, logits)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        return logits.softmax(1), logits


def default_out(model_file: Path, fmt: str) -> Path:
    return model_file.parent / EXPORT_DIR / f"model{FORMATS[fmt]}"


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def export_model(run_or_ckpt: str | Path, fmt: str = "onnx", out: str | Path | None = None,
                 weights: str = "best", model: checkpoint.ModelArg = None) -> tuple[Path, Path]:
    """Write the model in `fmt` and its JSON sidecar; returns (model file, sidecar). Python form of
    `cifarlab export`. Files cifarlab did not write are never replaced (fsio.write_outputs)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}' (choose from: {', '.join(FORMATS)})")
    if fmt == "onnx":
        require_extra("export", "ONNX export")
    model_file = checkpoint.find_model_file(run_or_ckpt, weights)
    classifier, record = checkpoint.load_model(model_file, model=model)
    owned = out is None  # RUN/export/ is cifarlab's; in a folder of the user's, see fsio.write_outputs
    if out is None:
        out = default_out(model_file, fmt)
    else:
        out = Path(out)
        if out.is_dir():
            out = out / f"model{FORMATS[fmt]}"
    module = Exportable(classifier.float().eval()).eval()
    example = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)  # batch 2: 1 gets specialised
    info = sidecar_contents(record, fmt, out.name)
    data = _onnx_bytes(module, example, info) if fmt == "onnx" else _torchscript_bytes(module, example, info)
    info["sha256"] = hashlib.sha256(data).hexdigest()
    sidecar = (json.dumps(info, indent=2) + "\n").encode()
    fsio.write_outputs(out.parent, {out.name: data, sidecar_path(out).name: sidecar}, owned=owned)
    return out, sidecar_path(out)


def sidecar_contents(record: dict[str, Any], fmt: str, file_name: str) -> dict[str, Any]:
    """The sidecar: what a consumer needs to feed the file and read its answer."""
    classes = list(record["classes"])
    metrics = record.get("metrics", {})
    return {
        "format": EXPORT_FORMAT, "version": 1, "export_format": fmt, "file": file_name,
        "model": record.get("model"), "recipe": record.get("config", {}).get("recipe"),
        "weights": record.get("weights", "final"), "epoch": record.get("epoch"),
        "classes": classes,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, 32, 32], "layout": "NCHW", "channels": "RGB",
                  "dtype": "uint8" if fmt == "onnx" else "uint8 or float32", "range": [0, 255],
                  "normalization": "inside the graph: feed raw pixels"},
        "outputs": [{"name": "probs", "shape": ["batch", len(classes)], "meaning": "softmax probabilities"},
                    {"name": "logits", "shape": ["batch", len(classes)], "meaning": "raw scores"}],
        "mean": record.get("mean"), "std": record.get("std"),
        "metrics": {k: metrics[k] for k in ("val_acc", "best_val_acc", "epochs") if k in metrics},
        "cifarlab_version": __version__, "torch_version": torch.__version__,
    }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide noise a user can do nothing about: the ONNX exporter's warnings about torchvision ops
    this model never uses, and torch.jit's deprecation notices (TorchScript still loads everywhere)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _onnx_bytes(module: nn.Module, example: torch.Tensor, info: dict[str, Any]) -> bytes:
    """torch.export-based exporter (the maintained one since torch 2.9), dynamic batch size."""
    with _quiet_exporter():
        program = torch.onnx.export(
            module, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=OUTPUT_NAMES,
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, verbose=False)
    assert program is not None  # dynamo=True always returns the program
    proto = program.model_proto
    info["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    proto.metadata_props.add(key="cifarlab", value=json.dumps(info))
    return bytes(proto.SerializeToString())


def _torchscript_bytes(module: nn.Module, example: torch.Tensor, info: dict[str, Any]) -> bytes:
    """Traced, not scripted: the networks have no control flow, and tracing needs no annotations."""
    buffer = io.BytesIO()
    with torch.no_grad(), _quiet_exporter():
        traced = torch.jit.trace(module, example)
        torch.jit.save(traced, buffer, _extra_files={"cifarlab.json": json.dumps(info)})
    return buffer.getvalue()
