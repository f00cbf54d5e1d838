"""budget.py: sizing a run to a wall-clock budget, and --budget from the command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize(("seconds", "epochs", "share", "subset"),
                         [(1000, 6, 21 / 176, None), (600, 3, 1.0, None), (100, 1, 1.0, 21504),
                          (60, 1, 1.0, 11520)])
def test_size_to_budget(seconds: float, epochs: int, share: float, subset: int | None,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    # 1 s per step of 256, 1 ms per evaluated image: an epoch of 45,000 is 176 + 10 s of eval
    monkeypatch.setattr(budget, "measure_rates", lambda *a, **k: (1.0, 0.001))
    config = make_config("fast", budget=float(seconds), tta=False, eval_every=1, budget_min_epochs=0)
    config = budget.fit(config, sized(), torch.device("cpu"), nothing, spent=0.0, quiet=True)
    assert (config.epochs, config.subset) == (epochs, subset)
    assert config.last_epoch_share == pytest.approx(share)
    # what it plans fits: the steps, an evaluation and writes an epoch, best.pt's calibration, saving
    steps = -(-(config.subset or 45_000) // 256)
    planned = (epochs - 1 + share) * steps + epochs * (10 + 0.3) + (5 if epochs > 1 else 0) + 2
    assert planned <= 0.97 * seconds
    if seconds == 1000:  # 5 whole epochs leave 21 s: the sixth takes 21 of its 176 steps
        assert planned >= 0.97 * seconds - 1  # filled to within a step


def test_fewer_evaluations_leave_time_to_train(monkeypatch: pytest.MonkeyPatch) -> None:
    """eval_every 0: one evaluation at the end; 5 x 10 s more, and best.pt's calibration, go to
    training."""
    monkeypatch.setattr(budget, "measure_rates", lambda *a, **k: (1.0, 0.001))
    spans = [budget.plan(make_config("fast", tta=False, eval_every=k), sized(), 1.0, 0.001, 970.0)
             for k in (1, 0)]
    assert spans[0] is not None and spans[1] is not None
    # eval_every 1 evaluates each of its 6 epochs (10 s) and calibrates best.pt (5 s) as well
    assert spans[0].epochs == 6 and spans[1].epochs == 6
    assert spans[1].span - spans[0].span == pytest.approx((5 * 10 + 5) / 176, abs=1 / 176)


def test_tta_counts_the_views_beyond_the_last_evaluation() -> None:
    with_tta = budget.plan(make_config("fast", tta=True, tta_fraction=0.25), sized(), 1.0, 0.001, 1050.0)
    without = budget.plan(make_config("fast", tta=False), sized(), 1.0, 0.001, 1050.0)
    assert with_tta is not None and without is not None
    # 1.25 more views of 5,000 val images at 1 ms: 6.25 s fewer for training, at 1 s a step
    assert without.span - with_tta.span == pytest.approx(6.25 / 176, abs=1 / 176)


def test_budget_picks_the_widest_net_that_trains_enough_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step times grow with the widths: the widest that fits budget_min_epochs wins; a width of
    yours, or a net the budget cannot rebuild, is kept."""
    seconds = {(32, 128, 128): 0.3, (64, 128, 128): 0.5, (64, 192, 192): 0.7, (64, 256, 256): 1.0}
    probed: list[tuple[int, ...]] = []

    def rates(config: Any, *args: Any, **kwargs: Any) -> tuple[float, float]:
        probed.append(tuple(config.model_kwargs.get("widths", (64, 256, 256))))
        return seconds[probed[-1]], 0.0005

    monkeypatch.setattr(budget, "measure_rates", rates)
    fast = make_config("fast", budget=600.0, budget_min_epochs=6, eval_every=0)
    fitted = budget.fit(fast, sized(), torch.device("cpu"), nothing, 0.0, quiet=True)
    # 0.3 s: 10.9 epochs fit; 0.5 s: 6.5; 0.7 s: 4.7 < 6, so the probing stops there
    assert fitted.model_kwargs["widths"] == [64, 128, 128] and fitted.epochs == 7
    assert probed == [(32, 128, 128), (64, 128, 128), (64, 192, 192)]
    long = budget.fit(dataclasses.replace(fast, budget=1800.0), sized(), torch.device("cpu"),
                      nothing, 0.0, quiet=True)
    assert long.model_kwargs["widths"] == [64, 256, 256]  # fast's own at 30 minutes
    probed.clear()
    mine = dataclasses.replace(fast, model_kwargs={"widths": [48, 96, 96]})
    seconds[(48, 96, 96)] = 0.25
    assert budget.fit(mine, sized(), torch.device("cpu"), nothing, 0.0, quiet=True
                      ).model_kwargs == {"widths": [48, 96, 96]}
    assert probed == [(48, 96, 96)]
    probed.clear()
    kept = budget.fit(fast, sized(), torch.device("cpu"), nothing, 0.0, quiet=True, widths=False)
    assert "widths" not in kept.model_kwargs and len(probed) == 1
    probed.clear()  # an epochs cap: the widest net that trains all the epochs allowed
    capped = budget.fit(dataclasses.replace(fast, max_epochs=4), sized(), torch.device("cpu"),
                        nothing, 0.0, quiet=True)
    assert capped.model_kwargs["widths"] == [64, 192, 192] and capped.epochs == 4


def test_too_small_a_budget_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "measure_rates", lambda *a, **k: (5.0, 0.01))
    config = make_config("fast", budget=30.0, budget_min_epochs=0)
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
                 # the recipe's net (test_budget_picks_the_widest_net_that_trains_enough_epochs picks)
                 "--set", "budget_min_epochs=0", "--out", str(out), "--quiet"])
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
    plain = make_config("fast", budget=1000.0, tta=False, eval_every=1, budget_min_epochs=0)
    resized = make_config("fast", budget=1000.0, tta=False, eval_every=1, budget_min_epochs=0,
                          low_res_share=0.5)
    fitted = [budget.fit(c, sized(), torch.device("cpu"), nothing, 0.0, quiet=True)
              for c in (plain, resized)]
    # 970 s planned: 5 full epochs of 176 steps + 10.3 s (933.5 s with saving and best.pt's
    # calibration, 5 s) leave 21 steps of a sixth; with 4 of 7 at 24 px (0.5625 of a step), 6 fit
    # and 142 steps of a seventh (969.1 s)
    spans = [c.epochs - 1 + c.last_epoch_share for c in fitted]
    assert spans == [pytest.approx(5 + 21 / 176), pytest.approx(6 + 142 / 176)]


@pytest.mark.slow
def test_final_fit_reruns_the_budget_run_on_every_image(toy_data: Path, tmp_path: Path) -> None:
    """The shipped model (docs/fast.md): the chosen run's settings (its epochs, widths and last
    epoch's share) again on all the training images, with no validation split."""
    chosen, final = tmp_path / "chosen", tmp_path / "final"
    assert main(["train", "--recipe", "fast_small", "--data", str(toy_data), "--batch-size", "64",
                 "--budget", "1h", "--epochs", "1", "--out", str(chosen), "--quiet"]) == 0
    assert main(["train", "--config", str(chosen / "config.json"), "--set", "budget=none",
                 "--val-fraction", "0", "--data", str(toy_data), "--out", str(final), "--quiet"]) == 0
    picked, shipped = (json.loads((run / "config.json").read_text()) for run in (chosen, final))
    for key in ("epochs", "model_kwargs", "last_epoch_share", "lr", "seed"):
        assert shipped["config"][key] == picked["config"][key], key
    assert shipped["config"]["val_fraction"] == 0 and shipped["val_images"] == 0
    assert shipped["train_images"] == picked["train_images"] + picked["val_images"]


def test_the_speed_probe_never_holds_more_images_than_the_run_has() -> None:
    """Issue 22, item 6: `--batch-size 1000000 --budget 60s` asked the probe for 24.6 GB."""
    seen: list[int] = []

    class Counting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(3, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape[0])
            return self.head(x.mean((2, 3)))

    config = make_config("base", batch_size=1_000_000, channels_last=False)
    per_step, per_image = budget.measure_rates(config, torch.device("cpu"), 10, Counting, n_train=16)
    assert max(seen) == 16 and per_step > 0 and per_image > 0
