"""budget.py: sizing a run to a wall-clock budget, and --budget from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab import budget
from cifarlab.api import make_config
from cifarlab.cli import main
from cifarlab.data import Split
from cifarlab.errors import UserError
from cifarlab.prepare import Data


def sized(n_train: int = 45_000, n_val: int = 5_000, clean: int = 5_000) -> Data:
    """A stand-in for the run's data that has only sizes (the budget plans from sizes alone)."""
    def split(n: int) -> Split:
        return Split(np.empty((n, 0, 0, 3), np.uint8), np.zeros(n, np.int64))
    return Data([str(i) for i in range(10)], Path("d"), split(n_train), split(n_val), split(clean))


@pytest.mark.parametrize(("seconds", "epochs", "subset"),
                         [(1000, 5, None), (600, 3, None), (100, 1, 21504), (60, 1, 11776)])
def test_size_to_budget(seconds: float, epochs: int, subset: int | None,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    # 1 s per step of 256, 1 ms per evaluated image: an epoch of 45,000 is 176 + 10 s of eval
    monkeypatch.setattr(budget, "measure_rates", lambda *a, **k: (1.0, 0.001))
    config = make_config("fast", budget=float(seconds), tta=False)
    config = budget.fit(config, sized(), torch.device("cpu"), nothing, spent=0.0, quiet=True)
    assert (config.epochs, config.subset) == (epochs, subset)
    # what it plans fits: epochs x (steps + eval + writes) + final save
    steps = (config.subset or 45_000) / 256
    assert config.epochs * (steps + 10 + 0.3) + 2 <= seconds


def test_too_small_a_budget_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "measure_rates", lambda *a, **k: (5.0, 0.01))
    config = make_config("fast", budget=30.0)
    with pytest.raises(UserError, match="too short"):
        budget.fit(config, sized(), torch.device("cpu"), nothing, 0.0, quiet=True)


def nothing() -> torch.nn.Module:
    raise AssertionError("the probe is replaced: no model is built")


@pytest.mark.slow
def test_budget_and_seeds_from_the_command_line(toy_data: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "seeds"
    code = main(["train", "--recipe", "fast_small", "--data", str(toy_data), "--val-fraction",
                 "0.2", "--batch-size", "64", "--budget", "1h", "--epochs", "2", "--seeds", "2",
                 "--out", str(out), "--quiet"])
    assert code == 0
    seeds = json.loads((out / "seeds.json").read_text())
    assert [s["val_acc"] for s in seeds["summaries"]] == [
        json.loads((out / f"seed-{s}" / "summary.json").read_text())["val_acc"] for s in (0, 1)]
    mean, std = seeds["mean_std"]["val_acc"]
    assert min(s["val_acc"] for s in seeds["summaries"]) <= mean <= max(
        s["val_acc"] for s in seeds["summaries"]) and std >= 0
    config = json.loads((out / "seed-0" / "config.json").read_text())["config"]
    assert (config["budget"], config["epochs"]) == (3600, 2)  # sized, capped, recorded
    assert "+-" in capsys.readouterr().out

    assert main(["evaluate", str(out / "seed-0"), "--tta", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tta"] is True and 0 <= result["accuracy"] <= 1


def test_budget_counts_low_res_epochs_as_cheaper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "measure_rates", lambda *a, **k: (1.0, 0.001))
    plain = make_config("fast", budget=1000.0, tta=False)
    resized = make_config("fast", budget=1000.0, tta=False, low_res_share=0.5)
    fitted = [budget.fit(c, sized(), torch.device("cpu"), nothing, 0.0, quiet=True)
              for c in (plain, resized)]
    # 970 s planned: 5 full epochs of 176 steps + 10.3 s fit (931 s), 6 do not (1,118 s); with 3
    # of 6 at 24 px (0.5625 of a step) 6 fit (887 s), and 7 with 4 at 24 px do not (996 s)
    assert fitted[0].epochs == 5 and fitted[1].epochs == 6
