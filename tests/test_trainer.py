"""The trainer: the run folder, determinism, exact resume (the fast recipes too), low-res epochs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cifarlab import checkpoint, rundir, trainer
from cifarlab.api import make_config
from cifarlab.errors import Interrupted, TrainingError, UserError
from cifarlab.networks import create_model
from conftest import InterruptAfter, read_metrics, tiny_config


def toy_fast(data: Path, **overrides: Any) -> Any:
    settings = {"epochs": 3, "batch_size": 64, "val_fraction": 0.2, "seed": 1, "device": "cpu",
                "clean_train_size": 64}
    settings.update(overrides)
    return make_config("fast_small", data=str(data), **settings)


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


@pytest.mark.slow
def test_same_seed_same_numbers(toy_data: Path, tmp_path: Path) -> None:
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "train_acc_clean")
    runs = [trainer.train(tiny_config(toy_data, "robust", seed=s), out=tmp_path / f"r{i}", quiet=True)[1]
            for i, s in enumerate((4, 4, 5))]
    assert [runs[0][k] for k in keys] == [runs[1][k] for k in keys]
    assert [runs[0][k] for k in keys] != [runs[2][k] for k in keys]


@pytest.mark.slow
@pytest.mark.parametrize("limit", [5, 15])  # mid-epoch 1, and mid-epoch 2
def test_interrupt_and_resume_is_exact(toy_data: Path, tmp_path: Path, limit: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(toy_data, "robust", epochs=3)
    trainer.train(config, out=tmp_path / "straight", quiet=True)

    with pytest.raises(Interrupted):
        trainer.train(tiny_config(toy_data, "robust", epochs=3), out=tmp_path / "cut", quiet=True,
                      callbacks=[InterruptAfter(limit + 1)])
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    assert not (tmp_path / "cut" / "model.pt").exists()
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


@pytest.mark.slow
def test_fast_recipe_trains_and_reports_tta(toy_data: Path, tmp_path: Path) -> None:
    _, summary = trainer.train(toy_fast(toy_data), out=tmp_path / "run", quiet=True)
    losses = [float(row["train_loss"]) for row in read_metrics(tmp_path / "run")]
    assert losses[-1] < losses[0] and 0 <= summary["val_acc_tta"] <= 1
    assert summary["peak_rss_mb"] > 0 and summary["wall_seconds"] >= summary["total_seconds"]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["val_acc_tta"] == summary["val_acc_tta"]


@pytest.mark.slow
def test_fast_interrupt_and_resume_is_exact(toy_data: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Lookahead's average and the frozen whitening bias survive a resume mid-epoch."""
    config = toy_fast(toy_data, whiten_bias_epochs=1)
    trainer.train(config, out=tmp_path / "straight", quiet=True)
    with pytest.raises(Interrupted):  # 6 steps per epoch: mid-epoch 2, off the 5-step grid
        trainer.train(toy_fast(toy_data, whiten_bias_epochs=1), out=tmp_path / "cut", quiet=True,
                      callbacks=[InterruptAfter(9)])
    trainer.resume(tmp_path / "cut", quiet=True)
    assert read_metrics(tmp_path / "cut")[-1]["val_acc"] == read_metrics(
        tmp_path / "straight")[-1]["val_acc"]
    a, _ = checkpoint.load_model(tmp_path / "straight")
    b, _ = checkpoint.load_model(tmp_path / "cut")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.slow
def test_mixed_chains_resume_exactly(toy_data: Path, tmp_path: Path) -> None:
    """AugMix + PRIME chains and their consistency views draw from the step's generator alone: a
    run cut mid-epoch and resumed ends with the same weights as one that was never stopped."""
    settings = {"augment": {"translate": 2, "augmix": True, "prime": True, "mix_share": 0.5,
                            "consistency": 12.0}}
    trainer.train(toy_fast(toy_data, epochs=2, **settings), out=tmp_path / "straight", quiet=True)
    with pytest.raises(Interrupted):  # 6 steps per epoch: mid-epoch 2
        trainer.train(toy_fast(toy_data, epochs=2, **settings), out=tmp_path / "cut", quiet=True,
                      callbacks=[InterruptAfter(8)])
    trainer.resume(tmp_path / "cut", quiet=True)
    a, _ = checkpoint.load_model(tmp_path / "straight", weights="final")
    b, _ = checkpoint.load_model(tmp_path / "cut", weights="final")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # ... and the chains did change what the model learned.
    plain = trainer.train(toy_fast(toy_data, epochs=2), out=tmp_path / "plain", quiet=True)[1]
    mixed = float(read_metrics(tmp_path / "straight")[-1]["train_loss"])
    assert plain["train_loss"] != pytest.approx(mixed)


@pytest.mark.slow
def test_muon_run_resumes_exactly(toy_data: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config("fast", data=str(toy_data), epochs=2, batch_size=64, val_fraction=0.2,
                         device="cpu", tta=False, model="fastnet_small")
    trainer.train(config, out=tmp_path / "straight", quiet=True)
    with pytest.raises(Interrupted):
        trainer.train(config, out=tmp_path / "cut", quiet=True,
                      callbacks=[InterruptAfter(5)])
    trainer.resume(tmp_path / "cut", quiet=True)
    a, _ = checkpoint.load_model(tmp_path / "straight", weights="final")
    b, _ = checkpoint.load_model(tmp_path / "cut", weights="final")
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.slow
def test_low_res_epochs_train_on_smaller_images(toy_data: Path, tmp_path: Path) -> None:
    sizes: list[tuple[int, int]] = []  # (epoch, side) of every training batch

    class Recorder(torch.nn.Module):
        def __init__(self, num_classes: int = 4) -> None:
            super().__init__()
            self.net = create_model("fastnet_small", num_classes).body

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                sizes.append((len(records), x.shape[-1]))
            return self.net(x)

    records: list[int] = []
    config = toy_fast(toy_data, epochs=4, low_res_share=0.5, low_res=16, tta=False,
                      calibrate=False)
    trainer.train(config, out=tmp_path / "run", model=Recorder(),
                  callbacks=[lambda run, metrics: records.append(metrics["epoch"])], quiet=True)
    by_epoch = {epoch: {side for e, side in sizes if e == epoch} for epoch, _ in sizes}
    assert by_epoch == {0: {16}, 1: {16}, 2: {32}, 3: {32}}


def test_low_res_with_a_fixed_size_head_is_one_line(toy_data: Path, tmp_path: Path) -> None:
    config = make_config("base", data=str(toy_data), epochs=2, low_res_share=0.5, device="cpu")
    with pytest.raises(UserError, match="fails on a batch of 2 x 3 x 24 x 24 images \\(low_res_share"):
        trainer.train(config, out=tmp_path / "run", quiet=True)
