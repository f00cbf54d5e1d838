"""Temperature scaling: the fitted temperature undoes over- or under-confidence, accuracy stays."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cifarlab as cl
from cifarlab.calibrate import ece, fit_temperature
from cifarlab.networks import create_model


def calibrated_logits(n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is calibrated by construction: labels are drawn from it."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=gen) * 2
    labels = torch.multinomial(logits.softmax(1), 1, generator=gen).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_temperature_recovers_the_distortion(scale: float) -> None:
    logits, labels = calibrated_logits()
    temperature = fit_temperature(logits * scale, labels)
    assert temperature == pytest.approx(scale, rel=0.15)
    assert ece(logits * scale / temperature, labels) < 0.03
    if scale != 1.0:
        assert ece(logits * scale, labels) > 0.05


@pytest.mark.slow
def test_training_stores_the_temperature_and_keeps_accuracy(toy_data: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    run = cl.train("base", data=toy_data, out=tmp_path / "run", epochs=2, batch_size=32,
                   val_fraction=0.2, lr=0.02, quiet=True)
    summary = run.results
    assert summary["temperature"] > 0 and {"ece", "ece_calibrated"} <= set(summary)
    for weights in ("best", "final"):
        model = run.load_model(weights)
        assert float(model.temperature) != 1.0
    assert run.evaluate(weights="final")["accuracy"] == pytest.approx(summary["val_acc"], abs=1e-6)
    uncalibrated = cl.train("base", data=toy_data, out=tmp_path / "raw", epochs=2, batch_size=32,
                            val_fraction=0.2, lr=0.02, quiet=True, calibrate=False)
    assert float(uncalibrated.load_model().temperature) == 1.0


def test_files_from_before_calibration_still_load() -> None:
    model = create_model("base", 10)
    state = {k: v for k, v in model.state_dict().items() if k != "temperature"}
    again = create_model("base", 10)
    again.load_state_dict(state)
    assert float(again.temperature) == 1.0
