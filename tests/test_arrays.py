"""arrays.py: images in memory, as Keras hands them over, become the same uint8 data a file gives;
a run trained on them records their fingerprint, and asks for them again where it needs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import cifarlab as cl
from cifarlab.arrays import as_images, as_labels, fingerprint, to_dataset

CLASSES = ["cat", "dog", "frog", "ship"]


def keras_like(n: int = 320, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as keras.datasets.cifar10.load_data() gives them: uint8 NHWC and (N, 1) labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, (n, 1))
    x = rng.normal(110, 30, (n, 32, 32, 3))
    for k in range(1, 4):
        x[..., k - 1] += 70 * (y[:, 0] == k)[:, None, None]
    return np.clip(x, 0, 255).astype(np.uint8), y


def test_every_layout_keras_and_torch_users_hold_becomes_the_same_images() -> None:
    x, y = keras_like(8)
    expected = as_images(x)
    assert expected.dtype == np.uint8 and expected.shape == (8, 32, 32, 3)
    assert np.array_equal(as_images(x / 255.0), expected)  # floats 0..1
    assert np.array_equal(as_images(x.astype(np.float32)), expected)  # floats 0..255
    assert np.array_equal(as_images(x.transpose(0, 3, 1, 2)), expected)  # NCHW
    assert np.array_equal(as_images(torch.from_numpy(x).permute(0, 3, 1, 2).numpy()), expected)
    grey = as_images(x[..., 0])
    assert grey.shape == (8, 32, 32, 3) and np.array_equal(grey[..., 2], x[..., 0])
    assert as_labels(y).shape == (8,) and as_labels(y).dtype == np.int64
    assert np.array_equal(as_labels(np.eye(4)[y[:, 0]]), y[:, 0])  # one-hot


@pytest.mark.parametrize(("images", "labels", "message"), [
    (np.zeros((4, 28, 28, 3), np.uint8), np.zeros(4), "must be N x 32 x 32 x 3"),
    (np.full((4, 32, 32, 3), -1.5), np.zeros(4), "pass raw pixels"),
    (np.full((4, 32, 32, 3), np.nan), np.zeros(4), "pass raw pixels"),
    (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(5), "4 images but 5 labels"),
    (np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1, 2, 9]), "give every class a name"),
    (np.zeros((4, 32, 32, 3), np.uint8), np.array([0.5, 1, 2, 3]), "whole numbers"),
    (np.zeros((4, 32, 32, 3), np.uint8), np.array(["a", "b", "c", "d"]), "class indices"),
])
def test_bad_arrays_are_one_clear_line(images: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(cl.UserError, match=message):
        to_dataset((images, labels), classes=CLASSES if "name" in message else None)


def test_a_torch_dataset_of_pairs_is_read_and_fingerprinted() -> None:
    x, y = keras_like(12)

    class Pairs(torch.utils.data.Dataset):  # type: ignore[misc]
        def __len__(self) -> int:
            return 12

        def __getitem__(self, i: int) -> Any:
            return torch.from_numpy(x[i]).permute(2, 0, 1).float() / 255, torch.tensor(int(y[i, 0]))

    from_torch, from_numpy = to_dataset(Pairs(), CLASSES), to_dataset((x, y), CLASSES)
    assert from_torch.source == from_numpy.source  # the same images: the same fingerprint
    assert str(from_numpy.source).startswith("memory:") and fingerprint(from_numpy) in str(from_numpy.source)
    assert to_dataset((x[::-1], y[::-1]), CLASSES).source != from_numpy.source


@pytest.mark.slow
def test_a_run_on_arrays_evaluates_resumes_and_asks_for_them_again(tmp_path: Path) -> None:
    x, y = keras_like()
    x_val, y_val = keras_like(80, seed=1)
    run = cl.train("base", data=(x, y), val_data=(x_val, y_val), classes=CLASSES, epochs=2,
                   batch_size=32, out=tmp_path / "run", quiet=True)
    assert run.config.data.startswith("memory:") and len(run.history) == 2
    assert run.evaluate().images == 80  # its own val_data, kept by the Run in memory
    assert run.evaluate(data=(x_val, y_val)).accuracy == pytest.approx(run.evaluate().accuracy)
    again = cl.load(run.path)
    with pytest.raises(cl.UserError, match=r"pass them again, data=\(x, y\)"):
        again.evaluate()
    assert again.evaluate(data=(x_val, y_val), split="test").images == 80
    extended = cl.resume(run.path, epochs=3, data=(x, y), val_data=(x_val, y_val))  # the same: on
    assert len(extended.history) == 3
    with pytest.raises(cl.UserError, match="not the ones the run trained on"):
        cl.resume(run.path, epochs=4, data=keras_like(seed=5))
