"""Data from memory, as Keras hands it over: `(x, y)` numpy arrays (keras.datasets.cifar10.
load_data()), torch tensors, cifarlab's own Dataset, or any torch Dataset of (image, label),
turned into the same uint8 Dataset a file source gives, checked with one clear error.

    >>> import numpy as np
    >>> from cifarlab.arrays import to_dataset
    >>> x = np.zeros((20, 32, 32, 3), np.uint8); y = np.arange(20)[:, None] % 2   # Keras' (N, 1)
    >>> to_dataset((x, y), classes=["cat", "dog"]).classes
    ['cat', 'dog']

Images may be uint8 0..255 or floats 0..1 (or 0..255), NHWC or NCHW, grey or RGB, 32 x 32;
labels integers (N,) or (N, 1), or one-hot (N, K). cifarlab normalises inside the model, so
standardised images (negative values) are refused: pass the raw pixels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.data import MEMORY_PREFIX, Dataset, Split
from cifarlab.errors import UserError

MAX_IMAGES = 2_000_000  # a torch Dataset is read into memory: 6 GB of 32x32 images at most
SIDE = 32


def is_memory(data: Any) -> bool:
    """Data given as objects in memory rather than as a path."""
    return data is not None and not isinstance(data, str | Path) and not hasattr(data, "__fspath__")


def to_dataset(data: Any, classes: list[str] | None = None, val: Any = None,
               what: str = "data") -> Dataset:
    """A Dataset from arrays, tensors, a cifarlab Dataset or a torch Dataset; with `val`
    (the same kinds), that is its val split (as a source's val/ folder: val_fraction is not used).
    Without `val`, the images are the train split (val is carved by the run's val_fraction)."""
    if isinstance(data, Dataset):
        dataset = data
    else:
        images, labels = _pair(data, what)
        names = classes or [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
        dataset = Dataset(source=Path(MEMORY_PREFIX), kind="arrays", classes=list(names),
                          splits={"train": Split(images, labels)})
    if classes is not None and list(classes) != dataset.classes:
        dataset = Dataset(dataset.source, dataset.kind, list(classes), dataset.splits)
    if val is not None:
        val_images, val_labels = _pair(val, "val_data")
        dataset = Dataset(dataset.source, dataset.kind, dataset.classes,
                          {**dataset.splits, "val": Split(val_images, val_labels)})
    _check_labels(dataset)
    return Dataset(Path(MEMORY_PREFIX + fingerprint(dataset)), dataset.kind, dataset.classes,
                   dataset.splits)


def fingerprint(dataset: Dataset) -> str:
    """A short hash of the images, labels and class names: a run records it, so that the arrays
    given again (to resume, to evaluate the val split) can be told from others."""
    digest = hashlib.sha1("|".join(dataset.classes).encode())
    for name in sorted(dataset.splits):
        split = dataset.splits[name]
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(split.images).data)
        digest.update(np.ascontiguousarray(split.labels).data)
    return digest.hexdigest()[:16]


def _pair(data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC images, int64 labels) from (x, y) or a torch Dataset of (image, label)."""
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):  # a torch Dataset
        x, y = _read_items(data, what)
    else:
        raise UserError(f"{what} must be a path, (images, labels) arrays, a cifarlab Dataset or a "
                        f"torch Dataset of (image, label); got {type(data).__name__}")
    images, labels = as_images(_numpy(x), what), as_labels(_numpy(y), what)
    if len(images) != len(labels):
        raise UserError(f"{what}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _read_items(dataset: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    if len(dataset) > MAX_IMAGES:
        raise UserError(f"{what} holds {len(dataset):,} items; cifarlab reads at most "
                        f"{MAX_IMAGES:,} into memory")
    images, labels = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise UserError(f"{what}[{index}] must be an (image, label) pair")
        image, label = item
        if hasattr(image, "convert"):  # a PIL image
            image = np.asarray(image.convert("RGB"))
        images.append(_numpy(image))
        labels.append(int(_numpy(label)))
    if not images:
        raise UserError(f"{what} is empty")
    return np.stack(images), np.asarray(labels)


def as_images(x: np.ndarray, what: str = "data") -> np.ndarray:
    """Images as uint8 (N, 32, 32, 3): from uint8 or float, NHWC or NCHW, grey or RGB."""
    if x.ndim == 3:  # (N, H, W): grey
        x = x[..., None]
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):  # NCHW
        x = x.transpose(0, 2, 3, 1)
    if x.ndim != 4 or x.shape[1:3] != (SIDE, SIDE) or x.shape[3] not in (1, 3):
        raise UserError(f"{what}: images must be N x 32 x 32 x 3 (or N x 3 x 32 x 32), got shape "
                        f"{tuple(x.shape)}; resize them to 32 x 32 first")
    if x.shape[3] == 1:
        x = np.repeat(x, 3, axis=3)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind not in "fiu":
        raise UserError(f"{what}: images must be numbers, got dtype {x.dtype}")
    low, high = float(np.min(x)), float(np.max(x))
    if not np.isfinite(low) or not np.isfinite(high) or low < 0 or high > 255:
        raise UserError(f"{what}: pixel values run from {low:g} to {high:g}; cifarlab normalises "
                        "inside the model, so pass raw pixels: uint8 0..255, or floats 0..1")
    scale = 255.0 if high <= 1.0 else 1.0  # floats 0..1 (x / 255, as Keras tutorials do) or 0..255
    return np.clip(np.rint(x.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def as_labels(y: np.ndarray, what: str = "data") -> np.ndarray:
    """Labels as int64 (N,): from (N,), Keras' (N, 1), or one-hot (N, K)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2:  # one-hot (or probabilities): the most likely class
        y = y.argmax(1)
    if y.ndim != 1:
        raise UserError(f"{what}: labels must be N integers (or N x 1, or one-hot N x K), got "
                        f"shape {tuple(y.shape)}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise UserError(f"{what}: labels must be whole numbers (class indices)")
    elif y.dtype.kind not in "iu":
        raise UserError(f"{what}: labels must be class indices (integers), got dtype {y.dtype}")
    return y.astype(np.int64)


def _check_labels(dataset: Dataset) -> None:
    count = len(dataset.classes)
    for name, split in dataset.splits.items():
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= count):
            raise UserError(f"{name} labels run from {split.labels.min()} to {split.labels.max()}, "
                            f"but there are {count} classes ({', '.join(dataset.classes[:5])}"
                            f"{' ...' if count > 5 else ''}): give every class a name (classes=)")
    if count < 2:
        raise UserError("a classifier needs at least 2 classes")
