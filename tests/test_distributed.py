"""Distributed training on the CPU: 2 gloo processes on 127.0.0.1 against 1 process."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
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

    def fake_launch(nproc: int, argv: list[str], **where: object) -> int:
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


# ----------------------------------------------------------------------------------------------
# Two machines: two `cifarlab train --nnodes 2` launchers on this machine play two nodes of one
# process each, meeting at a c10d rendezvous on 127.0.0.1 (docs/distributed.md shows the commands).

TWO_NODE = ["train", "--recipe", "base", "--epochs", "3", "--batch-size", "32", "--val-fraction",
            "0.2", "--seed", "0", "--device", "cpu", "--checkpoint-every", "2", "--quiet"]
COLUMNS = ["train_loss", "train_acc", "train_acc_clean", "val_loss", "val_acc", "lr"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def node(argv: list[str], cwd: Path) -> subprocess.Popen[str]:
    # TMPDIR: a killed launcher's job file is left where the test's folder is cleaned up
    env = {**os.environ, "CIFARLAB_THREADS": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(cwd)}
    return subprocess.Popen([sys.executable, "-m", "cifarlab", *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def two_nodes(argv: list[str], cwd: Path) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    """Node A, which holds the rendezvous (the first to listen at the endpoint), then node B."""
    port = free_port()
    where = ["--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    first = node([*argv, *where], cwd)
    deadline = time.monotonic() + 120
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline, "node A never listened at the endpoint"
        time.sleep(0.05)
    return first, node([*argv, *where], cwd)


def kill_machine(pid: int) -> None:
    """SIGKILL a launcher and everything under it (torchrun starts its workers in their own
    session, so a process group would miss them): what a machine that dies looks like."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in children.read_text().split())
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def metrics(run: Path) -> list[dict[str, float]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: float(row[k]) for k in ["epoch", *COLUMNS]} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def one_node_two_processes(toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same run on one machine with two processes (--nproc 2)."""
    out = tmp_path_factory.mktemp("ref") / "one-node"
    proc = node([*TWO_NODE, "--data", str(toy_data), "--nproc", "2", "--out", str(out)], out.parent)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


@pytest.mark.slow
def test_two_nodes_train_one_run_that_matches_one_node(one_node_two_processes: Path, toy_data: Path,
                                                       tmp_path: Path, mlflow_store: str,
                                                       mlflow_experiment: str) -> None:
    out = tmp_path / "shared" / "two-nodes"  # both "machines" see this folder; rank 0 writes it
    a, b = two_nodes([*TWO_NODE, "--data", str(toy_data), "--out", str(out), "--mlflow",
                      mlflow_store], tmp_path)
    for proc in (a, b):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "[W" not in err, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["two-nodes"]
    assert sorted(p.name for p in out.iterdir()) == [
        ".cifarlab-run", "best.pt", "checkpoint.pt", "config.json", "metrics.csv", "mlflow.json",
        "model.pt", "report", "summary.json"]
    # one run folder, nothing else, no stray temp file; and one MLflow run: rank 0 alone logs
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name(mlflow_experiment)
    [logged] = client.search_runs([experiment.experiment_id])
    assert logged.info.status == "FINISHED" and logged.data.params["processes"] == "2"
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "val_acc")] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["processes"] == 2
    # The same global batches, gradients and rank streams as one node with two processes: the
    # same run, up to float rounding in the all-reduce (measured here: identical).
    two, one = metrics(out), metrics(one_node_two_processes)
    assert len(two) == len(one) == 3
    for mine, theirs in zip(two, one, strict=True):
        assert mine == pytest.approx(theirs, rel=1e-6, abs=1e-9)


@pytest.mark.slow
def test_a_dead_node_stops_the_other_in_one_line_and_the_run_resumes(
        one_node_two_processes: Path, toy_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "killed"
    a, b = two_nodes([*TWO_NODE, "--data", str(toy_data), "--out", str(out)], tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").exists():  # the step-2 checkpoint of epoch 1
            assert a.poll() is None and b.poll() is None, (a.stderr.read() if a.stderr else "")
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.02)
        killed_at = time.monotonic()
        kill_machine(b.pid)
        _, err = a.communicate(timeout=120)
        seconds = time.monotonic() - killed_at
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                kill_machine(proc.pid)
            proc.wait()
    assert a.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line: no traceback, no launcher or c10d chatter
    assert lines[0].startswith("cifarlab: training failed: lost contact with another training "
                               "process (") and lines[0].endswith(f"continue with --resume {out}")
    assert not (out / "model.pt").exists()  # it did stop mid-run
    with capsys.disabled():
        print(f"\nthe node left printed, {seconds:.1f} s after the other was killed: {lines[0]}")
    # The last checkpoint resumes (here on one machine, two processes: the same world size) and
    # ends where the uninterrupted run did: a lost node costs the steps since that checkpoint.
    proc = node(["train", "--resume", str(out), "--nproc", "2", "--quiet"], tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    for mine, theirs in zip(metrics(out), metrics(one_node_two_processes), strict=True):
        assert mine == pytest.approx(theirs, rel=1e-6, abs=1e-9)


def test_several_nodes_need_an_endpoint_and_a_shared_folder(toy_data: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--data", str(toy_data), "--nnodes", "2"]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    assert "--nnodes > 1 needs --rdzv-endpoint HOST:PORT" in capsys.readouterr().err
    assert main([*argv, "--rdzv-endpoint", "127.0.0.1:29400"]) == 2
    assert "--nnodes > 1 needs --out DIR: a folder that every machine sees" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
