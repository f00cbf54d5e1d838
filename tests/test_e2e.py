"""End to end on the real data: decode the shared JPEG archive, train `base` briefly, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifarlab.cli import main


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
