"""The run directory: created atomically, never over the user's files; checkpoints checked on resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cifarlab import checkpoint, rundir, trainer
from cifarlab.cli import main
from cifarlab.config import TrainConfig
from cifarlab.errors import UserError
from conftest import tiny_run


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
    saved["epoch"], saved["history"] = 1, saved["history"][:1]  # after epoch 1, consistently
    saved["best"] = {"epoch": 1, "value": saved["history"][0]["val_acc"]}
    torch.save(saved, path)
    with pytest.raises(UserError, match="holds a config that does not check out"):
        trainer.resume(run, quiet=True)


# ---------------------------------------------------------------------------------------------
# Issue 22: run folders from someone else, and two processes on one run


@pytest.mark.slow
@pytest.mark.parametrize("command, folder, theirs", [
    ("report", "report", "report.html"), ("explain", "explain", "filters.png"),
    ("export", "export", "model.torchscript.pt"), ("robustness", "robustness", "robustness.json")])
def test_outputs_never_go_through_a_link(command: str, folder: str, theirs: str, tmp_path: Path,
                                         tmp_path_factory: pytest.TempPathFactory,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Item 5: with RUN/report (explain, export, robustness) a link to a folder of the user's,
    report.html, filters.png ... there were replaced."""
    run = Path(shutil.copytree(tiny_run(tmp_path_factory), tmp_path / "run"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / theirs).write_text("the user's own file")
    (run / folder).symlink_to(mine, target_is_directory=True)
    argv = {"report": ["report", str(run), "--quiet"], "explain": ["explain", str(run)],
            "export": ["export", str(run), "--format", "torchscript"],
            "robustness": ["robustness", str(run), "--quick", "--corruptions", "fog", "--quiet"]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a link" in err, err
    assert [p.name for p in mine.iterdir()] == [theirs]
    assert (mine / theirs).read_text() == "the user's own file"


def test_readers_ignore_linked_output_folders(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (run / "explain").symlink_to(tmp_path / "elsewhere")
    (run / "robustness").mkdir()
    assert rundir.found_output_folder(run, "explain") is None
    assert rundir.found_output_folder(run, "robustness") == run / "robustness"
    assert rundir.found_output_folder(run, "report") is None  # not there
    with pytest.raises(UserError, match="is a link"):
        rundir.output_folder(run, "explain")
    assert rundir.output_folder(run, "report").is_dir()


def test_lock_is_one_per_folder(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint.pt.1a2b3c4d.tmp").write_bytes(b"left by kill -9")
    with rundir.lock(tmp_path):
        assert not list(tmp_path.glob(".*.tmp"))  # stale: no one else held the lock
        (tmp_path / ".metrics.csv.1a2b3c4d.tmp").write_bytes(b"a write in flight")
        with pytest.raises(UserError, match="another process is training"), rundir.lock(tmp_path):
            pass
        assert (tmp_path / ".metrics.csv.1a2b3c4d.tmp").exists()  # the holder's: kept
    with rundir.lock(tmp_path):  # released on exit
        pass


@pytest.mark.slow
def test_two_processes_never_train_one_run(tmp_path: Path, toy_data: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 7: a second `train --resume RUN` ran beside the first, and its start deleted the
    first one's in-flight temp file, so that write failed."""
    monkeypatch.setenv("CIFARLAB_THREADS", "1")
    config = TrainConfig(data=str(toy_data), epochs=1, batch_size=32, val_fraction=0.2)
    run, _ = trainer.train(config, out=tmp_path / "run", quiet=True)
    first = subprocess.Popen([sys.executable, "-m", "cifarlab", "train", "--resume", str(run),
                              "--epochs", "1000"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, start_new_session=True)
    try:
        assert first.stdout is not None and "resuming" in first.stdout.readline()  # it trains
        in_flight = run / ".checkpoint.pt.0badc0de.tmp"
        in_flight.write_bytes(b"the first process's write in flight")
        started = time.monotonic()
        assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "another process is training" in err, err
        assert time.monotonic() - started < 30 and in_flight.exists()
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # the first is gone: its lock with it; its temp file is stale now, and removed under the lock
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert not in_flight.exists()
