"""checkpoint.py: model files load without running code; foreign and truncated ones fail in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cifarlab import checkpoint, trainer
from cifarlab.errors import UserError
from conftest import tiny_config


def test_checkpoints_load_without_unpickling_code(toy_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer.train(tiny_config(toy_data, epochs=1), out=run, quiet=True)
    for name in ("model.pt", "checkpoint.pt"):
        assert isinstance(torch.load(run / name, weights_only=True), dict)


def test_foreign_and_truncated_checkpoints(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not a cifarlab model file"):
        checkpoint.load_model(foreign)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "cifarlab-model", "x": Path("/")}, evil)
    with pytest.raises(UserError, match="not a readable cifarlab file"):
        checkpoint.load_model(evil)
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(UserError, match="not a readable cifarlab file"):
        checkpoint.load_model(truncated)
