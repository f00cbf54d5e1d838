"""The run directory: created atomically, never over the user's files; checkpoints checked on resume."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from cifarlab import checkpoint, rundir, trainer
from cifarlab.cli import main
from cifarlab.config import TrainConfig
from cifarlab.errors import UserError


def test_out_refuses_a_folder_of_the_users(tmp_path: Path, toy_data: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 12, item 8: --out into a folder that is not a run overwrote config.json & co."""
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    (mine / ".draft.tmp").write_text("keep me")
    assert main(["train", "--data", str(toy_data), "--epochs", "1", "--out", str(mine)]) == 2
    assert "folder with other files in it" in capsys.readouterr().err
    assert (mine / "config.json").read_text() == '{"mine": true}'
    assert (mine / ".draft.tmp").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert rundir.create(tmp_path / "empty", "base") == tmp_path / "empty"  # empty is fine
    with pytest.raises(UserError, match="already holds a run"):
        rundir.create(tmp_path / "empty", "base")


def test_runs_started_at_once_never_share_a_folder(tmp_path: Path) -> None:
    """Issue 12, item 9: two runs in the same second got one folder; now mkdir decides."""
    made: list[Path] = []

    def start() -> None:
        made.append(rundir.create(None, "base", root=tmp_path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 8 and all((p / rundir.MARKER).is_file() for p in made)


@pytest.mark.parametrize("bad", [{"epochs": "3"}, {"val_fraction": "0.25"}, {"augment": [1, 2]},
                                 {"lr": None}, {"frobnicate": 1}])
def test_resume_checks_the_checkpoints_config(bad: dict[str, object], tmp_path: Path, toy_data: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12, item 18: such configs crashed resume with TypeError/AttributeError."""
    config = TrainConfig(data=str(toy_data), epochs=2, batch_size=32, val_fraction=0.2)
    run, _ = trainer.train(config, out=tmp_path / "run", quiet=True)
    path = run / rundir.CHECKPOINT
    saved = checkpoint.load(path, checkpoint.CHECKPOINT_FORMAT)
    saved["config"] = {**saved["config"], **bad}
    saved["epoch"] = 1
    torch.save(saved, path)
    with pytest.raises(UserError, match="holds a config that does not check out"):
        trainer.resume(run, quiet=True)
