"""The trainer: run directory contents, determinism, exact resume, NaN handling, safe checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cifarlab import checkpoint, distributed, rundir, trainer
from cifarlab.config import TrainConfig, make_config
from cifarlab.errors import Interrupted, TrainingError, UserError
from conftest import StopAfter, read_metrics


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARLAB_THREADS", "1")  # tiny models: threads only add overhead


def tiny_config(data: Path, recipe: str = "base", **overrides: Any) -> TrainConfig:
    settings = {"epochs": 2, "batch_size": 32, "val_fraction": 0.2, "seed": 1, "device": "cpu"}
    settings.update(overrides)
    return make_config(recipe, data=str(data), **settings)


def test_run_directory(toy_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _, summary = trainer.train(tiny_config(toy_data), out=run, quiet=True)
    assert {p.name for p in run.iterdir()} == {".cifarlab-run", "config.json", "metrics.csv",
                                               "summary.json", "model.pt", "best.pt",
                                               "checkpoint.pt"}
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == rundir.METRIC_COLUMNS
    saved = json.loads((run / "summary.json").read_text())
    for key in ("recipe", "epochs", "train_acc", "train_acc_clean", "val_acc", "best_val_acc",
                "seconds_per_epoch", "total_seconds"):
        assert key in saved
    assert saved == json.loads(json.dumps(summary))
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["recipe"] == "base" and config["versions"]["torch"] == torch.__version__
    assert config["classes"] == ["a", "b", "c", "d"]
    assert summary["val_acc"] > 0.5  # toy classes differ by colour: easy to learn
    assert not list(run.glob(".*.tmp"))


def test_same_seed_same_numbers(toy_data: Path, tmp_path: Path) -> None:
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "train_acc_clean")
    runs = [trainer.train(tiny_config(toy_data, "robust", seed=s), out=tmp_path / f"r{i}", quiet=True)[1]
            for i, s in enumerate((4, 4, 5))]
    assert [runs[0][k] for k in keys] == [runs[1][k] for k in keys]
    assert [runs[0][k] for k in keys] != [runs[2][k] for k in keys]


@pytest.mark.parametrize("limit", [5, 15])  # mid-epoch 1, and mid-epoch 2
def test_interrupt_and_resume_is_exact(toy_data: Path, tmp_path: Path, limit: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(toy_data, "robust", epochs=3)
    trainer.train(config, out=tmp_path / "straight", quiet=True)

    monkeypatch.setattr(trainer, "_StopFlag", StopAfter)
    StopAfter.limit, StopAfter.reads = limit, 0
    with pytest.raises(Interrupted):
        trainer.train(tiny_config(toy_data, "robust", epochs=3), out=tmp_path / "cut", quiet=True)
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    assert not (tmp_path / "cut" / "model.pt").exists()
    monkeypatch.setattr(trainer, "_StopFlag", StopAfter.__mro__[1])  # not undo(): keep 1 thread
    trainer.resume(tmp_path / "cut", quiet=True)

    def without_time(run: Path) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in read_metrics(run)]

    assert without_time(tmp_path / "cut") == without_time(tmp_path / "straight")
    a, _ = checkpoint.load_model(tmp_path / "straight", weights="final")
    b, _ = checkpoint.load_model(tmp_path / "cut", weights="final")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_resume_refuses_finished_and_out_refuses_existing(toy_data: Path, tmp_path: Path) -> None:
    trainer.train(tiny_config(toy_data, epochs=1), out=tmp_path / "run", quiet=True)
    with pytest.raises(UserError, match="already complete"):
        trainer.resume(tmp_path / "run", quiet=True)
    with pytest.raises(UserError, match="already holds a run"):
        trainer.train(tiny_config(toy_data, epochs=1), out=tmp_path / "run", quiet=True)


def test_nan_loss_stops_with_clear_message(toy_data: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step \d+"):
        trainer.train(tiny_config(toy_data, lr=math.inf), out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "model.pt").exists()


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


def test_subset_is_a_random_sample(toy_data: Path, tmp_path: Path) -> None:
    data = trainer.load_data(tiny_config(toy_data, subset=40), distributed.Context(),
                           torch.device("cpu"), quiet=True)
    assert len(data.train) == 40
    assert len(set(data.train.labels.tolist())) == 4  # not just the first class
