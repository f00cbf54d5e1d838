"""Evaluation and prediction with large batches under `torch.inference_mode()`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.data import Split
from cifarlab.errors import UserError
from cifarlab.sources import IMAGE_SUFFIXES, decode_image, list_files


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device `name` means; under torchrun, `local_rank` picks this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available")
    device = torch.device(name)
    if device.type == "cuda" and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {local_rank} has no GPU: this machine has "
                            f"{torch.cuda.device_count()}; start at most that many per machine")
        device = torch.device("cuda", local_rank)
    return device


def to_batch(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC images to an NCHW float tensor in channels_last layout (no copy of the layout)."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # e.g. a decoded image's read-only buffer: torch wants to own it
    tensor = torch.as_tensor(images).to(device, non_blocking=True)
    return tensor.permute(0, 3, 1, 2).float()


def tta_logits(model: nn.Module, batch: torch.Tensor, plain: torch.Tensor | None = None) -> torch.Tensor:
    """Test-time augmentation: average the logits of six views of each image.

    The image and its mirror count half; the pairs shifted by one pixel up-left and down-right
    (reflect-padded) a quarter each. The model saw flips and shifts in training, so each view is
    a fair guess, and averaging them cancels part of each view's error (about +0.5 points on
    CIFAR-10 for the fast recipe) at six times the inference cost; five, when the logits of the
    image itself are known already (`plain`).
    """
    def pair(x: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
        return 0.5 * ((model(x) if known is None else known) + model(x.flip(3)))

    padded = torch.nn.functional.pad(batch, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]
    return 0.5 * pair(batch, plain) + 0.25 * pair(up_left) + 0.25 * pair(down_right)


def tta_views(tta: bool, tta_fraction: float = 1.0) -> float:
    """Forward passes an image costs in `predict_logits`: 1 without TTA, 6 with all of it, and
    1 + 5 x fraction for the least-confident share (their plain view is reused)."""
    if not tta or tta_fraction <= 0:
        return 1.0
    return 6.0 if tta_fraction >= 1 else 1.0 + 5.0 * tta_fraction


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device,
                   batch_size: int = 256, tta: bool = False, tta_fraction: float = 1.0) -> torch.Tensor:
    """Logits for all images (on the CPU), computed in eval mode in large batches.

    With `tta`, the six views of `tta_logits`; with `tta_fraction` < 1, only for that share of the
    images the model is least sure of (a smaller top-1 probability): a confident answer seldom
    changes with more views, so 25% of the images cost 2.25 views an image instead of 6
    (`tta_views`: the plain view of the unsure ones is reused).
    """
    was_training = model.training
    model.eval()

    def run(pick: np.ndarray | torch.Tensor | None, views: bool,
            plain: torch.Tensor | None = None) -> torch.Tensor:
        source = images if pick is None else images[pick]
        outputs = []
        for i in range(0, len(source), batch_size):
            batch = to_batch(source[i:i + batch_size], device)
            known = None if plain is None else plain[i:i + batch_size].to(device)
            outputs.append((tta_logits(model, batch, known) if views else model(batch)).float().cpu())
        return torch.cat(outputs) if outputs else torch.empty(0, 0)

    if not tta or tta_fraction <= 0:
        logits = run(None, False)
    elif tta_fraction >= 1:
        logits = run(None, True)
    else:
        logits = run(None, False)
        confidence = logits.softmax(1).max(1).values
        unsure = torch.argsort(confidence)[:math.ceil(len(logits) * tta_fraction)]
        index = np.sort(unsure.numpy())
        if len(index):
            rows = torch.from_numpy(index)
            logits[rows] = run(index, True, logits[rows])
    model.train(was_training)
    return logits


def evaluate_split(model: nn.Module, split: Split, device: torch.device,
                   classes: list[str] | None = None, tta: bool = False,
                   tta_fraction: float = 1.0) -> dict[str, Any]:
    """Accuracy, mean cross-entropy and per-class accuracy of `model` on `split`."""
    if len(split) == 0:
        raise UserError("cannot evaluate on an empty split")
    logits = predict_logits(model, split.images, device, tta=tta, tta_fraction=tta_fraction)
    labels = torch.as_tensor(split.labels)
    loss = F.cross_entropy(logits, labels).item()
    correct = logits.argmax(1) == labels
    result: dict[str, Any] = {"accuracy": correct.float().mean().item(), "loss": loss,
                              "n": len(split)}
    if classes is not None:
        per_class = {}
        for index, name in enumerate(classes):
            mask = labels == index
            per_class[name] = correct[mask].float().mean().item() if mask.any() else None
        result["per_class"] = per_class
    return result


def image_files(paths: list[str]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image files."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():  # list_files: no recursion, no link loops, bounded
            found = [path / name for name in list_files(path)
                     if Path(name).suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise UserError(f"no images (.png, .jpg, .jpeg) in {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"image not found: {path}")
    return files


def read_images(files: list[Path]) -> np.ndarray:
    """Decode image files (any size or mode) to 32x32 RGB uint8, NHWC."""
    images = []
    for file in files:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {file}: {exc.strerror}") from exc
        images.append(decode_image(data, str(file))[0])
    return np.stack(images)


def as_images(items: Any) -> tuple[np.ndarray, list[str]]:
    """What `Run.predict` accepts, as (uint8 NHWC 32x32 images, a name for each): image files or
    folders (str or Path), a uint8 array (N, 32, 32, 3) or (32, 32, 3), PIL images, or a list."""
    from PIL import Image

    from cifarlab.sources import IMAGE_SIZE, _to_rgb

    if isinstance(items, np.ndarray):
        array = items[None] if items.ndim == 3 else items
        if array.ndim != 4 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or array.dtype != np.uint8:
            raise UserError(f"image arrays must be uint8 of shape (N, 32, 32, 3), got {array.dtype} "
                            f"{array.shape}; pass files or PIL images for other sizes")
        return array, [f"image {i}" for i in range(len(array))]
    if isinstance(items, str | Path | Image.Image):
        items = [items]
    images: list[np.ndarray] = []
    names: list[str] = []
    for item in items:
        if isinstance(item, Image.Image):
            rgb = _to_rgb(item)
            if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
                rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
            images.append(np.asarray(rgb, dtype=np.uint8))
            names.append(f"image {len(names)}")
        elif isinstance(item, str | Path):
            files = image_files([str(item)])
            images.extend(read_images(files))
            names.extend(str(f) for f in files)
        else:
            array, _ = as_images(np.asarray(item))
            images.extend(array)
            names.extend(f"image {len(names) + i}" for i in range(len(array)))
    if not images:
        raise UserError("no images to predict")
    return np.stack(images), names


def top_k(logits: torch.Tensor, classes: list[str], names: list[str],
          k: int) -> list[dict[str, Any]]:
    """[{"image": name, "top": [{"label", "prob"}, ...]}, ...], best first."""
    if k < 1:
        raise UserError("--top-k must be at least 1")
    top = logits.softmax(1).topk(min(k, len(classes)), dim=1)
    return [
        {"image": name,
         "top": [{"label": classes[int(i)], "prob": float(p)} for p, i in zip(vals, idx, strict=True)]}
        for name, vals, idx in zip(names, top.values, top.indices, strict=True)
    ]


def predict_files(model: nn.Module, classes: list[str], files: list[Path], k: int,
                  device: torch.device) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file (any size or mode, resized to 32x32)."""
    if k < 1:
        raise UserError("--top-k must be at least 1")
    logits = predict_logits(model, read_images(files), device)
    return top_k(logits, classes, [str(f) for f in files], k)
