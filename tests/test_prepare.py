"""prepare.py: the splits a run carves (a subset is a seeded random sample, taken once)."""

from __future__ import annotations

from pathlib import Path

from cifarlab import prepare
from cifarlab.data import load_dataset
from conftest import tiny_config


def test_subset_is_a_random_sample(toy_data: Path, tmp_path: Path) -> None:
    config = tiny_config(toy_data, subset=40)
    data = prepare.carve(load_dataset(config.data, quiet=True), config)
    assert len(data.train) == 40
    assert len(set(data.train.labels.tolist())) == 4  # not just the first class


def test_class_weights_balance_an_imbalanced_folder(tmp_path: Path) -> None:
    """Keras users' compute_class_weight("balanced"): n / (classes x count) over the run's own
    training images, so each class adds up to the same weight in the loss."""
    import numpy as np
    import pytest

    from cifarlab.errors import UserError
    from conftest import class_images, png_bytes

    root = tmp_path / "imbalanced"
    for label, (name, count) in enumerate((("cat", 60), ("dog", 20), ("frog", 10))):
        (root / "train" / name).mkdir(parents=True)
        for i, image in enumerate(class_images(np.full(count, label))):
            (root / "train" / name / f"{i}.png").write_bytes(png_bytes(image))
    config = tiny_config(root, class_weight="balanced")
    data = prepare.carve(load_dataset(config.data, quiet=True), config)
    weights = prepare.class_weights(config, data)
    assert weights is not None and data.classes == ["cat", "dog", "frog"]
    counts = np.bincount(data.train.labels, minlength=3)
    assert counts.tolist() == [48, 16, 8]  # 20% of each class held out for validation
    np.testing.assert_allclose(weights.numpy() * counts, len(data.train) / 3, rtol=1e-6)
    given = prepare.class_weights(tiny_config(root, class_weight={"frog": 4, "1": 2}), data)
    assert given is not None and given.tolist() == [1.0, 2.0, 4.0]  # by name, by index, else 1
    assert prepare.class_weights(tiny_config(root), data) is None
    with pytest.raises(UserError, match="class_weight names 'frgo' \\(did you mean 'frog'\\?\\)"):
        prepare.class_weights(tiny_config(root, class_weight={"frgo": 2}), data)
