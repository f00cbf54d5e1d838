"""Evaluation and prediction with large batches under `torch.inference_mode()`, and the scores
computed from predictions (accuracy, loss, per-class precision/recall/F1, confusion, calibration).

    >>> import numpy as np
    >>> from cifarlab.evaluate import confusion_counts
    >>> confusion_counts(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).tolist()
    [[1, 0], [1, 1]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.calibrate import calibration
from cifarlab.checkpoint import ModelArg, load_model
from cifarlab.data import Dataset, Split, classes_differ, load_dataset, make_splits
from cifarlab.display import MAX_TEXT_ROWS, fields, table, text_table
from cifarlab.errors import UserError
from cifarlab.runtime import pick_device

if TYPE_CHECKING:
    from cifarlab.rundir import RunFiles
from cifarlab.runtime import to_batch
from cifarlab.sources import IMAGE_SUFFIXES, decode_image, list_files

EVAL_BATCH = 256  # images per forward pass when evaluating: large enough to keep the cores busy,
# small enough that a fast net's activations stay in cache (and under 1 GB on a GPU)
TTA_VIEWS = 6  # tta_logits: the image, its mirror, and both shifted one pixel two ways
CONFUSED_PAIRS = 5  # (true, predicted) pairs listed as most confused; more with many classes:
CONFUSED_PAIRS_PER_CLASS = 0.2  # 100 classes (CIFAR-100) -> 20 pairs
MANY_CLASSES = 20  # above this, per-class listings put the weakest classes first


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


def tta_views(tta_fraction: float) -> float:
    """Forward passes an image costs with TTA on the least-confident `tta_fraction` of images:
    all of them once, then that share TTA_VIEWS - 1 times more (their plain view is reused; all
    TTA_VIEWS, once, at 1.0): 2.25 at 0.25."""
    return float(TTA_VIEWS) if tta_fraction >= 1 else 1 + (TTA_VIEWS - 1) * tta_fraction


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device,
                   batch_size: int = EVAL_BATCH, tta: bool = False,
                   tta_fraction: float = 1.0, plain: torch.Tensor | None = None) -> torch.Tensor:
    """Logits for all images (on the CPU), computed in eval mode in large batches.

    With `tta`, the six views of `tta_logits`; with `tta_fraction` < 1, only for that share of the
    images the model is least sure of (a smaller top-1 probability): a confident answer seldom
    changes with more views, so 25% of the images cost 2.25 views an image instead of 6
    (`tta_views`: the plain view of the unsure ones is reused). `plain`: the model's logits of
    these images without TTA, if known already (the trainer's last evaluation): one view fewer.
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
        logits = run(None, False) if plain is None else plain.clone()
    elif tta_fraction >= 1:
        logits = run(None, True, plain)
    else:
        logits = run(None, False) if plain is None else plain.clone()
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
    folders (str or Path), PIL images, a list of them, or arrays and tensors as training takes
    them (uint8 0..255 or float 0..1, N x 32 x 32 x 3 or N x 3 x 32 x 32; one image without N)."""
    from PIL import Image

    from cifarlab.arrays import as_images as array_images
    from cifarlab.sources import IMAGE_SIZE, _to_rgb

    if isinstance(items, np.ndarray) or hasattr(items, "detach"):
        array = items.detach().cpu().numpy() if hasattr(items, "detach") else items
        one = array.ndim == 3 and (array.shape[-1] in (1, 3) or array.shape[0] in (1, 3))
        array = array_images(array[None] if one else array, "images")
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


class TopK(list[dict[str, Any]]):
    """Predictions for images: [{"image": name, "top": [{"label", "prob"}, ...]}, ...], best
    first; shows itself as a table of each image's classes and probabilities."""

    def _rows(self) -> list[list[str]]:
        return [[str(item["image"]), *(f"{t['label']} {t['prob']:.3f}" for t in item["top"])]
                for item in self]

    def _header(self) -> list[str]:
        k = max((len(item["top"]) for item in self), default=0)
        return ["image", *(["1st", "2nd", "3rd"] + [f"{i}th" for i in range(4, k + 1)])[:k]]

    def __repr__(self) -> str:
        return f"{len(self)} prediction{'s' if len(self) != 1 else ''}:\n" + text_table(
            self._header(), [[r[0][-40:], *r[1:]] for r in self._rows()], limit=MAX_TEXT_ROWS)

    def _repr_html_(self) -> str:
        header = self._header()
        return table(header, self._rows(), "l" + "t" * (len(header) - 1),
                     caption=f"{len(self)} predictions (class and probability, best first)")


class Evaluation(dict[str, Any]):
    """A model's scores on one split. Read them as attributes or keys (`.accuracy`,
    `["loss"]`); the detail is all there too: per_class (precision, recall, F1, support),
    macro_avg, most_confused, ece and calibration, confusion (counts and shares)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"an Evaluation has no '{name}'; it has: {', '.join(self)}") from None

    def _headline(self) -> str:
        epoch = f" (epoch {self['epoch']})" if self.get("epoch") else ""
        return (f"{self['split']} split, {self['images']:,} images, {self['weights']} weights{epoch}"
                f"{', TTA' if self.get('tta') else ''}")

    def _class_rows(self) -> list[list[str]]:
        """One row per class; past MANY_CLASSES (CIFAR-100), lowest F1 first: the ones to read."""
        items = list(self["per_class"].items())
        if len(items) > MANY_CLASSES:
            items.sort(key=lambda item: item[1]["f1"])
        return [[name, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}",
                 str(s["support"])] for name, s in items]

    def __repr__(self) -> str:
        per_class = sorted(self["per_class"].items(), key=lambda item: item[1]["f1"])
        worst = ", ".join(f"{name} {s['f1']:.2f}" for name, s in per_class[:3])
        pairs = ", ".join(f"{p['true']} -> {p['predicted']} ({p['count']})"
                          for p in self["most_confused"][:3])
        return (f"Evaluation({self._headline()}):\n"
                f"  accuracy {self['accuracy']:.4f}, loss {self['loss']:.4f}, macro F1 "
                f"{self['macro_avg']['f1']:.4f}, ECE {self['ece']:.4f}\n"
                f"  lowest F1: {worst}\n  most confused: {pairs or 'none'}\n"
                "  (per_class, macro_avg, most_confused, calibration, confusion: the detail)")

    def _repr_html_(self) -> str:
        summary = fields(f"Evaluation: {self._headline()}", [
            ("accuracy", f"{self['accuracy']:.4f}"), ("loss", f"{self['loss']:.4f}"),
            ("macro F1", f"{self['macro_avg']['f1']:.4f}"), ("ECE", f"{self['ece']:.4f}"),
            ("most confused", ", ".join(f"{p['true']} -> {p['predicted']} ({p['count']})"
                                        for p in self["most_confused"][:CONFUSED_PAIRS])
             + (f", ... ({len(self['most_confused'])} in most_confused)"
                if len(self["most_confused"]) > CONFUSED_PAIRS else "") or "none")])
        many = len(self["per_class"]) > MANY_CLASSES
        return summary + table(["class", "precision", "recall", "F1", "support"],
                               self._class_rows(), "tnnnn",
                               f"{len(self['per_class'])} classes, lowest F1 first" if many else None)


def top_k(logits: torch.Tensor, classes: list[str], names: list[str], k: int) -> TopK:
    """[{"image": name, "top": [{"label", "prob"}, ...]}, ...], best first."""
    if k < 1:
        raise UserError("--top-k must be at least 1")
    top = logits.softmax(1).topk(min(k, len(classes)), dim=1)
    return TopK([
        {"image": name,
         "top": [{"label": classes[int(i)], "prob": float(p)} for p, i in zip(vals, idx, strict=True)]}
        for name, vals, idx in zip(names, top.values, top.indices, strict=True)
    ])


def predict_files(model: nn.Module, classes: list[str], files: list[Path], k: int,
                  device: torch.device) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file (any size or mode, resized to 32x32)."""
    if k < 1:
        raise UserError("--top-k must be at least 1")
    logits = predict_logits(model, read_images(files), device)
    return top_k(logits, classes, [str(f) for f in files], k)


# ---------------------------------------------------------------------------------------------
# Which images a model is judged on


def evaluation_split(record: dict[str, Any], data: str | Dataset | None, split: str | None,
                     quiet: bool = False) -> tuple[str, Split]:
    """The split a model is judged on: the run's own data and its val carve-out unless asked
    otherwise. One rule for evaluate and report: the test split is used only when asked for.
    Images given in memory that are not the run's own are judged as a whole (their "test")."""
    config = record.get("config", {})
    dataset = load_dataset(data if data is not None else config.get("data"), quiet=quiet,
                           label_mode=str(config.get("label_mode", "fine")))
    if dataset.classes != record["classes"]:
        raise classes_differ(dataset.classes, list(record["classes"]))
    splits = make_splits(dataset, float(config.get("val_fraction", 0.1)),
                         int(config.get("split_seed", 0)))
    name = split or ("test" if list(splits) == ["test"] else "val")
    if name == "val" and "val" not in splits and "train" in splits:
        raise UserError("this run kept no validation images (--val-fraction 0): use --split test "
                        "(with a source that has one) or --split train")
    if name not in splits:
        hint = f"; pass --split {next(iter(splits))}" if len(splits) == 1 else ""
        raise UserError(f"{dataset.source} has no '{name}' split (available: "
                        f"{', '.join(splits)}){hint}")
    return name, splits[name]


# ---------------------------------------------------------------------------------------------
# Scores from predictions (pure functions of arrays)


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    flat = labels.astype(np.int64) * num_classes + predictions
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def class_scores(counts: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 per class; 0 where a class is never predicted or never present."""
    right = np.diag(counts).astype(np.float64)
    predicted, support = counts.sum(0), counts.sum(1)
    precision = np.divide(right, predicted, out=np.zeros_like(right), where=predicted > 0)
    recall = np.divide(right, support, out=np.zeros_like(right), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(right), where=total > 0)
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])} for i, name in enumerate(classes)}


def confused_pairs(num_classes: int) -> int:
    """How many most-confused pairs to list: 5, or a fifth of the classes when that is more."""
    return max(CONFUSED_PAIRS, round(num_classes * CONFUSED_PAIRS_PER_CLASS))


def most_confused(counts: np.ndarray, classes: list[str], top: int = CONFUSED_PAIRS) -> list[dict[str, Any]]:
    """The largest off-diagonal cells: which true class is most often taken for which other one."""
    off = counts.copy()
    np.fill_diagonal(off, 0)
    support = counts.sum(1)
    pairs = []
    for flat in np.argsort(off, axis=None, kind="stable")[::-1][:top]:
        i, j = divmod(int(flat), len(classes))
        if off[i, j] == 0:
            break
        pairs.append({"true": classes[i], "predicted": classes[j], "count": int(off[i, j]),
                      "share_of_true": float(off[i, j] / support[i])})
    return pairs


@dataclass
class Predictions:
    """A model's answers on one split: what every model-based figure and score is made from."""

    run_label: str
    split: str
    classes: list[str]
    images: np.ndarray  # uint8 NHWC
    labels: np.ndarray
    logits: torch.Tensor
    weights: str  # "best" or "final": which weights answered
    epoch: int | None  # the epoch those weights are from
    tta: bool = False

    @property
    def probs(self) -> np.ndarray:
        return self.logits.softmax(1).numpy()

    @property
    def where(self) -> str:
        epoch = f", epoch {self.epoch}" if self.epoch else ""
        return (f"{self.run_label}, {self.weights} weights{epoch}, {self.split} split "
                f"({len(self.labels):,} images{', TTA' if self.tta else ''})")


def predict_split(run: RunFiles, data: str | Dataset | None = None, split: str | None = None,
                  device: str = "auto", weights: str = "best", tta: bool = False,
                  model: ModelArg = None, quiet: bool = False) -> Predictions:
    """Load the run's model (best weights by default) and predict one split of its data."""
    torch_device = pick_device(device)
    classifier, record = load_model(run.path, model=model, weights=weights)
    split, part = evaluation_split(record, data, split, quiet=quiet)
    logits = predict_logits(classifier.to(torch_device), part.images, torch_device, tta=tta)
    return Predictions(run.label, split, list(record["classes"]), part.images, part.labels, logits,
                       str(record.get("weights", "final")), record.get("epoch"), tta)


def scores(p: Predictions) -> Evaluation:
    """Accuracy, loss, per-class precision/recall/F1, most confused pairs, calibration."""
    probs = p.probs
    predictions, confidence = probs.argmax(1), probs.max(1)
    correct = predictions == p.labels
    counts = confusion_counts(p.labels, predictions, len(p.classes))
    per_class = class_scores(counts, p.classes)
    calib = calibration(confidence, correct)
    macro = {key: float(np.mean([s[key] for s in per_class.values()]))
             for key in ("precision", "recall", "f1")}
    return Evaluation({
        "split": p.split, "images": len(p.labels), "weights": p.weights, "epoch": p.epoch,
        "tta": p.tta, "accuracy": float(correct.mean()),
        "loss": float(F.cross_entropy(p.logits, torch.as_tensor(p.labels)).item()),
        "ece": calib["ece"], "macro_avg": macro, "per_class": per_class,
        "most_confused": most_confused(counts, p.classes, confused_pairs(len(p.classes))),
        "calibration": calib,
        "confusion": {"split": p.split, "classes": p.classes, "rows": "true class",
                      "columns": "predicted", "counts": counts.tolist(),
                      "row_normalized": (counts / np.maximum(counts.sum(1, keepdims=True), 1)).tolist()},
    })
