"""cifarlab lr-find: a finite suggestion inside the range, nothing written unless asked, the
caller's global state and own model left as they were, and a figure that renders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import cifarlab as cl
from cifarlab.cli import main
from cifarlab.plots import to_png

QUICK = {"batch_size": 32, "val_fraction": 0.2, "device": "cpu"}



class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.slow
def test_lr_find_suggests_an_lr_and_leaves_nothing_behind(
        toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1234)
    rng_before, threads_before = torch.random.get_rng_state(), torch.get_num_threads()
    found = cl.lr_find("base", data=toy_data, steps=60, quiet=True, **QUICK)
    assert list(tmp_path.iterdir()) == []  # no run directory, no files
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before
    assert math.isfinite(found.suggestion) and 1e-7 < found.suggestion < 10
    assert found.suggestion == pytest.approx(found.minimum / 10)
    assert found.lrs[0] <= found.steepest <= found.minimum <= found.lrs[-1]
    assert len(found.lrs) == len(found.losses) == len(found.smoothed) <= 60
    assert found.lrs == sorted(found.lrs)
    # The test ran the loss up: either diverged (the usual end) or reached the last lr.
    assert "diverged" in found.stopped or "reached" in found.stopped or "became" in found.stopped
    # The smoothed minimum is a real minimum of the curve, well below where it started.
    assert min(found.smoothed) < 0.8 * found.smoothed[0]
    png = to_png(found.plot())
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.slow
def test_lr_find_cli_writes_only_with_out(toy_data: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    common = ["lr-find", "--recipe", "base", "--data", str(toy_data), "--steps", "40",
              "--set", "batch_size=32", "--set", "val_fraction=0.2"]
    assert main([*common, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rule"] == "minimum / 10" and printed["optimizer"] == "adam"
    assert list(tmp_path.iterdir()) == []
    assert main([*common, "--out", "lr"]) == 0
    out = capsys.readouterr().out
    assert "suggested lr" in out and "try: cifarlab train --recipe base --lr" in out
    assert sorted(p.name for p in (tmp_path / "lr").iterdir()) == [
        "lr_find.csv", "lr_find.json", "lr_find.png"]
    assert json.loads((tmp_path / "lr" / "lr_find.json").read_text())["suggestion"] == pytest.approx(
        printed["suggestion"])  # the same seeded test twice: the same answer


def test_lr_find_on_your_own_model_trains_a_copy(toy_data: Path) -> None:
    net = TinyNet(4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    found = cl.lr_find(model=net, data=toy_data, steps=30, optimizer="sgd", quiet=True, **QUICK)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert found.config["optimizer"] == "sgd" and 1e-7 < found.suggestion < 10


@pytest.mark.parametrize("argv, message", [
    (["--start", "1", "--end", "0.1"], "lr-find needs 0 < --start < --end"),
    (["--steps", "3"], "at least 10 --steps"),
    (["--set", "lrr=1"], "did you mean 'lr'"),
    (["--data", "/no/such/data"], "data source not found"),
])
def test_lr_find_user_errors(argv: list[str], message: str, toy_data: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lr-find", "--data", str(toy_data), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
