"""Faults during training: kill -9, a NaN loss, a full disk, an unwritable run directory, damaged
or hostile checkpoints. Each ends in a clear message, a non-zero exit code, no partial files, and a
last good checkpoint from which `--resume` finishes with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import csv
import errno
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import cifarlab as cl
from cifarlab import checkpoint, data, fsio, rundir
from cifarlab.cli import main

# 480 toy images, 20% for validation: 12 steps of 32 per epoch. `robust` has augmentation and
# dropout, so exact resumption needs every random stream restored.
ARGS = ["--recipe", "robust", "--epochs", "3", "--batch-size", "32", "--val-fraction", "0.2",
        "--seed", "1", "--device", "cpu", "--quiet"]
STEPS_PER_EPOCH = 12



@pytest.fixture(scope="module")
def reference(toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An uninterrupted run of ARGS: what every interrupted run must end up equal to."""
    run = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        assert main(["train", "--data", str(toy_data), *ARGS, "--out", str(run)]) == 0
    yield run


def metrics(run: Path) -> list[dict[str, str]]:
    """metrics.csv without the wall-clock columns."""
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(handle)]


def assert_same_run(run: Path, reference: Path) -> None:
    assert metrics(run) == metrics(reference)
    a, _ = checkpoint.load_model(run)
    b, _ = checkpoint.load_model(reference)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert not list(run.glob(".*.tmp"))


def saved_state(run: Path) -> dict[str, Any]:
    return checkpoint.load(run / rundir.CHECKPOINT, checkpoint.CHECKPOINT_FORMAT)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_is_exact(reference: Path, toy_data: Path,
                                               tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cifarlab", "train", "--data", str(toy_data), *ARGS,
           "--out", str(run), "--checkpoint-every", "2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    ckpt, seen_mtime, deadline = run / rundir.CHECKPOINT, 0, time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:  # wait for a mid-epoch-2 save
            mtime = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
            if mtime != seen_mtime:
                seen_mtime, state = mtime, saved_state(run)
                if state["epoch"] >= 1 and state["epoch_state"]["step"] > 0:
                    break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {err}"
    assert not (run / rundir.FINAL).exists()
    state = saved_state(run)
    assert state["epoch_state"]["step"] % 2 == 0  # a --checkpoint-every 2 save
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(run, reference)


class PoisonAt(cl.Callback):
    """Sets a weight to NaN after global step `at`, so that the next step's loss is NaN."""

    def __init__(self, at: int):
        self.at, self.steps = at, 0

    def on_step_end(self, trainer: Any, step: dict[str, float]) -> None:
        self.steps += 1
        if self.steps == self.at:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(math.nan)


@pytest.mark.slow
@pytest.mark.parametrize("every, last_good", [(0, "end of epoch 1"), (5, "epoch 2, step 5")])
def test_nan_loss_stops_and_the_last_good_checkpoint_resumes(
        every: int, last_good: str, reference: Path, toy_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(cl.TrainingError) as caught:  # the same settings as ARGS
        cl.train("robust", data=toy_data, out=run, epochs=3, batch_size=32, val_fraction=0.2,
                 seed=1, device="cpu", quiet=True, checkpoint_every=every,
                 callbacks=[PoisonAt(STEPS_PER_EPOCH + 6)])
    assert (f"loss became nan at epoch 2, step 7, lr 0.001; the last good checkpoint "
            f"({last_good}) is in {run}") in str(caught.value)
    state = saved_state(run)  # intact, and where the message says
    assert (state["epoch"], state["epoch_state"]["step"]) == (1, every)
    assert len(metrics(run)) == 1 and not (run / rundir.FINAL).exists()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(run, reference)


def test_a_diverging_loss_exits_1_naming_the_lr(toy_data: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """--lr 1e6: the loss explodes but stays finite; the run stops instead of "succeeding"."""
    run = tmp_path / "run"
    code = main(["train", "--data", str(toy_data), *ARGS, "--lr", "1e6", "--out", str(run),
                 "--epochs", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "loss diverged" in err and "lr 1e+06" in err and "Try a lower --lr" in err
    assert not (run / rundir.FINAL).exists()


def test_weights_that_go_non_finite_are_never_saved(toy_data: Path, tmp_path: Path) -> None:
    """lr=inf: the first step's loss is finite but its update is not; no checkpoint is written."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(toy_data), *ARGS, "--lr", "inf", "--out", str(run),
                 "--checkpoint-every", "1"]) == 1
    assert not (run / rundir.CHECKPOINT).exists()


def no_space(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FailAfter:
    """os.fsync that works `n` times on files, then finds the disk full (folders always sync)."""

    def __init__(self, n: int):
        self.n, self.real = n, os.fsync

    def __call__(self, fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            return self.real(fd)
        self.n -= 1
        if self.n < 0:
            no_space()
        self.real(fd)


class SmallDisk:
    """os.fdopen whose files take `room` bytes in all, then fail with ENOSPC mid-write."""

    def __init__(self, room: int):
        self.room, self.real = room, os.fdopen

    def __call__(self, fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        disk, handle = self, self.real(fd, mode, *args, **kwargs)

        class Limited:
            def write(self, data: Any) -> int:
                disk.room -= len(data)
                if disk.room < 0:
                    no_space()
                return int(handle.write(data))

            def __getattr__(self, name: str) -> Any:
                return getattr(handle, name)

            def __enter__(self) -> Limited:
                return self

            def __exit__(self, *exc: object) -> None:
                handle.close()

        return Limited()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["fsync", "write"])
def test_full_disk_is_one_clear_error_and_leaves_no_partial_file(
        fault: str, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    data.load_dataset(toy_data, quiet=True)  # decode and cache first: only the run writes below
    if fault == "fsync":  # config.json, best.pt, checkpoint 1 and metrics.csv fit; epoch 2 does not
        monkeypatch.setattr(fsio.os, "fsync", FailAfter(4))
    else:  # room for the small files, not for a checkpoint
        monkeypatch.setattr(fsio.os, "fdopen", SmallDisk(room=20_000))
    code = main(["train", "--data", str(toy_data), *ARGS, "--out", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"cannot write {run}/" in err and "No space left on device" in err
    assert not list(run.glob(".*.tmp")) and not (run / rundir.FINAL).exists()
    if fault == "fsync":  # the last good checkpoint is intact and resumable
        assert saved_state(run)["epoch"] == 1 and len(metrics(run)) == 1
        monkeypatch.undo()
        monkeypatch.setenv("CIFARLAB_THREADS", "1")
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
        assert len(metrics(run)) == 3
    else:  # nothing worth keeping was written: the run folder is gone, not half there
        assert not run.exists()


@pytest.mark.parametrize("where", ["file-in-the-way", "read-only"])
def test_unwritable_run_directory(where: str, toy_data: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """As root, chmod does not stop writes: a file where the folder should be, or a fake
    read-only file system, stands in for it."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    run = tmp_path / "blocker" / "run" if where == "file-in-the-way" else tmp_path / "run"
    data.load_dataset(toy_data, quiet=True)  # the data cache is elsewhere and writable
    if where == "read-only":
        def read_only(*args: object, **kwargs: object) -> None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(fsio, "create_temp", read_only)
    code = main(["train", "--data", str(toy_data), *ARGS, "--out", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert ("cannot create the folder" in err if where == "file-in-the-way"
            else "Read-only file system" in err)
    if where == "read-only":  # the folder cifarlab made for the run is not left behind empty
        assert not run.exists()


class RunsCode:
    """Pickles as a call of os.system: a checkpoint that would run code if unpickled freely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("damage, message", [
    ("truncated", "is not a readable cifarlab file"),
    ("garbage", "is not a readable cifarlab file"),
    ("foreign", "is not a cifarlab checkpoint file"),
    ("model-file", "is not a cifarlab checkpoint file"),
    ("runs-code", "is not a readable cifarlab file"),
    ("missing-keys", "is damaged"),
    ("wrong-shapes", "does not fit this run"),
])
def test_damaged_or_hostile_checkpoints(damage: str, message: str, reference: Path,
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    path = run / rundir.CHECKPOINT
    (run / rundir.FINAL).unlink()  # an unfinished run
    good = path.read_bytes()
    saved = torch.load(path, weights_only=True)
    marker = tmp_path / "code-ran"
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(1000))
    elif damage == "foreign":
        torch.save({"state_dict": saved["model"]}, path)
    elif damage == "model-file":
        shutil.copy(reference / rundir.FINAL, path)
    elif damage == "runs-code":
        torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "x": RunsCode(marker)}, path)
    elif damage == "missing-keys":
        torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "epoch": 1}, path)
    else:
        saved["model"] = {k: torch.zeros(3) for k in saved["model"]}
        torch.save(saved, path)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not marker.exists()


def test_checkpoint_every_must_not_be_negative(toy_data: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(toy_data), "--checkpoint-every", "-1", "--quiet"]) == 2
    assert "--checkpoint-every" in capsys.readouterr().err
