"""End to end on the real data: decode the shared JPEG archive, train `base` briefly, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cifarlab.cli import main
from conftest import png_bytes


@pytest.mark.slow
def test_base_one_epoch_beats_chance(shared_archive: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code = main(["train", "--recipe", "base", "--data", str(shared_archive), "--epochs", "1",
                 "--subset", "2000", "--out", str(run), "--quiet"])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    # 10 classes: chance is 0.10. One epoch on 2,000 images reaches about 0.3.
    assert summary["val_acc"] > 0.2, summary
    assert main(["evaluate", str(run), "--split", "val", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 5000 and result["accuracy"] == pytest.approx(summary["val_acc"])


@pytest.mark.parametrize("mode", ["fine", "coarse"])
def test_cifar100_end_to_end(mode: str, cifar100_archive: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """The official CIFAR-100 format, tiny: train, evaluate on val and test, predict, describe;
    fine labels (100 classes) or coarse ones (20 superclasses) all the way through."""
    run, classes = tmp_path / "run", {"fine": 100, "coarse": 20}[mode]
    assert main(["train", "--recipe", "base", "--data", str(cifar100_archive), "--label-mode", mode,
                 "--epochs", "1", "--val-fraction", "0.34", "--batch-size", "32", "--out", str(run),
                 "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["label_mode"] == mode and len(config["classes"]) == classes
    capsys.readouterr()
    for split, images in (("val", 100), ("test", 100)):
        assert main(["evaluate", str(run), "--split", split, "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["images"] == images and len(result["per_class"]) == classes
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(np.full((40, 50, 3), 120, np.uint8)))
    assert main(["predict", str(run), str(image), "--top-k", "3", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert len(top) == 3 and {t["label"] for t in top} <= set(config["classes"])
    assert main(["data", "--data", str(cifar100_archive), "--label-mode", mode, "--val-fraction",
                 "0.34", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["label_mode"] == mode and described["classes"] == config["classes"]
