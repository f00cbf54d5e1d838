"""Distributed training on the CPU: 2 gloo processes on 127.0.0.1 against 1 process."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cifarlab import distributed, runtime
from cifarlab.api import make_config
from cifarlab.cli import main
from cifarlab.config import Augment
from cifarlab.errors import UserError

PER_CLASS = 200  # 2,000 real images: 1,200 to train on, 800 to validate on


@pytest.fixture(scope="module")
def real_subset(shared_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first PER_CLASS images of each class of the real CIFAR-10 archive, as an image folder
    (copied, not decoded: a second or two)."""
    root = tmp_path_factory.mktemp("real") / "cifar10-subset"
    counts: dict[str, int] = {}
    with tarfile.open(shared_archive) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] != "train":
                continue
            if counts.get(parts[-2], 0) < PER_CLASS:
                counts[parts[-2]] = counts.get(parts[-2], 0) + 1
                target = root / "train" / parts[-2] / parts[-1]
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = archive.extractfile(member)
                assert handle is not None
                target.write_bytes(handle.read())
    assert len(counts) == 10
    return root


@pytest.mark.slow
def test_two_processes_match_one(real_subset: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARLAB_THREADS", "1")  # one thread per process: 2 cores, 2 processes
    args = ["train", "--recipe", "base", "--data", str(real_subset), "--epochs", "2",
            "--batch-size", "64", "--val-fraction", "0.4", "--seed", "0", "--device", "cpu",
            "--quiet"]
    work = tmp_path / "work"  # no --out: the default runs/<recipe>-<time> must appear once
    work.mkdir()
    two = subprocess.run([sys.executable, "-m", "cifarlab", *args, "--nproc", "2"], cwd=work,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    [run2] = (work / "runs").iterdir()
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
    assert sorted(p.name for p in run2.iterdir()) == [".cifarlab-run", "best.pt", "checkpoint.pt",
                                                       "config.json", "metrics.csv", "model.pt",
                                                       "summary.json"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    both = json.loads((run2 / "summary.json").read_text())
    assert (one["processes"], both["processes"]) == (1, 2)
    assert json.loads((run2 / "config.json").read_text())["processes"] == 2
    print(f"val_acc: 1 process {one['val_acc']:.4f}, 2 processes {both['val_acc']:.4f}")
    # The same global batches and gradients (up to rounding in the all-reduce): the same model.
    assert abs(one["val_acc"] - both["val_acc"]) <= 0.01
    assert abs(one["train_loss"] - both["train_loss"]) < 0.01


@pytest.mark.slow
def test_worker_failures_give_the_exit_code(tmp_path: Path) -> None:
    """A user error in the workers: rank 0 says it once, and --nproc exits with its code."""
    done = subprocess.run([sys.executable, "-m", "cifarlab", "train", "--nproc", "2", "--data",
                           str(tmp_path / "missing.tgz"), "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("data source not found") == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_workers_get_the_resolved_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--nproc hands every worker the parent's resolved settings (one file), not a list of flags."""
    seen: dict[str, object] = {}

    def fake_launch(nproc: int, argv: list[str]) -> int:
        seen["nproc"], seen["argv"] = nproc, argv
        seen["job"] = json.loads(Path(argv[-1]).read_text())
        return 0

    monkeypatch.setattr(distributed, "launch", fake_launch)
    monkeypatch.setattr("cifarlab.api.Run", lambda *a, **k: None)
    argv = ["train", "--recipe", "bn", "--data", "d.tgz", "--epochs", "3", "--batch-size", "8",
            "--lr", "0.0125", "--val-fraction", "0.2", "--seed", "7", "--subset", "100",
            "--device", "cpu", "--checkpoint-every", "5", "--set", "augment.flip=true",
            "--out", str(tmp_path / "r"), "--quiet", "--nproc", "2"]
    assert main(argv) == 0
    expected = make_config("bn", data="d.tgz", epochs=3, batch_size=8, lr=0.0125, val_fraction=0.2,
                           seed=7, subset=100, device="cpu", checkpoint_every=5,
                           augment=Augment(flip=True))
    assert seen["nproc"] == 2 and seen["argv"][:2] == ["-m", "cifarlab.worker"]
    assert seen["job"] == {"action": "train", "config": expected.to_dict(), "quiet": True,
                           "run_dir": str(tmp_path / "r")}
    assert (tmp_path / "r" / ".cifarlab-run").is_file()  # claimed once, by the parent


def test_context_from_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert distributed.from_env() == distributed.Context()
    for name, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                        "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    ctx = distributed.from_env()
    assert ctx == distributed.Context(3, 4, 1, 2) and ctx.enabled and not ctx.is_main
    monkeypatch.delenv("CIFARLAB_THREADS", raising=False)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert runtime.available_cores() == 4  # the machine's cores, shared by its 2 processes
    with pytest.raises(UserError, match="under torchrun leave it out"):
        distributed.launch(2, ["train"])
    monkeypatch.setenv("RANK", "9")
    with pytest.raises(UserError, match="bad torchrun environment"):
        distributed.from_env()
