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
