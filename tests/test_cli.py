"""The command line as a user meets it: help, listing, one-line errors with exit code 2, JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifarlab.cli import main
from conftest import png_bytes


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARLAB_THREADS", "1")


@pytest.fixture(scope="module")
def trained_run(toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--recipe", "base", "--data", str(toy_data), "--epochs", "2",
                 "--batch-size", "32", "--val-fraction", "0.2", "--out", str(run), "--quiet"])
    assert code == 0
    return run


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_list_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--list-recipes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("base", "robust", "bn", "fast", "fast_small"))


def test_help_mentions_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("train", "evaluate", "predict", "data"))


@pytest.mark.parametrize("argv, message", [
    (["train", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["train", "--data", "/no/such/file.tgz"], "data source not found"),
    (["evaluate", "/no/such/run"], "run directory not found"),
    (["predict", "/no/such/run", "x.png"], "run directory not found"),
    (["data", "--data", "/no/such/dir"], "data source not found"),
    (["train", "--resume", "/no/such/run"], "checkpoint not found"),
])
def test_user_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in one_line_error(capsys)


def test_data_command(toy_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "--data", str(toy_data), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "image-folder" in out and "val" in out and "test" in out


def test_evaluate_json(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    for split in ("val", "test", "train"):
        assert main(["evaluate", str(trained_run), "--split", split, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert {"accuracy", "loss", "images", "per_class", "weights", "epoch"} <= set(result)
        assert result["split"] == split and set(result["per_class"]) == {"a", "b", "c", "d"}
    summary = json.loads((trained_run / "summary.json").read_text())
    assert main(["evaluate", str(trained_run / "model.pt"), "--split", "val", "--json"]) == 0  # final
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(summary["val_acc"])


def test_evaluate_wrong_data(trained_run: Path, official_dir: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(trained_run), "--data", str(official_dir)]) == 2
    assert "differ from the model's" in one_line_error(capsys)


def test_predict(trained_run: Path, toy_data: Path, tmp_path: Path,
                 capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    image = toy_data / "test" / "b" / "0000.png"
    assert main(["predict", str(trained_run), str(image), "--top-k", "2", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert len(result["top"]) == 2 and result["top"][0]["prob"] >= result["top"][1]["prob"]
    big = tmp_path / "big.jpg"  # any size is resized
    from PIL import Image

    Image.new("RGB", (300, 200), (200, 10, 10)).save(big)
    assert main(["predict", str(trained_run), str(big), str(toy_data / "test" / "a")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 21 and lines[0].startswith(str(big))


def test_predict_rejects_bad_image(trained_run: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(png_bytes(__import__("numpy").zeros((8, 8, 3), "uint8"))[:30])
    assert main(["predict", str(trained_run), str(bad)]) == 2
    assert "cannot decode image" in one_line_error(capsys)


def test_not_our_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "model.pt"
    fake.write_text("hello")
    assert main(["evaluate", str(fake)]) == 2
    assert "not a readable cifarlab file" in one_line_error(capsys)


def test_ctrl_c_saves_and_resume_finishes(toy_data: Path, tmp_path: Path) -> None:
    """A real SIGINT to a real process: exit 130, a checkpoint, then --resume completes the run."""
    run = tmp_path / "run"
    env = {**os.environ, "CIFARLAB_THREADS": "1"}
    cmd = [sys.executable, "-m", "cifarlab", "train", "--recipe", "bn", "--data", str(toy_data),
           "--epochs", "8", "--batch-size", "16", "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Resume with: cifarlab train --resume" in err and "Traceback" not in err
    assert (run / "checkpoint.pt").exists() and not (run / "model.pt").exists()
    done = subprocess.run([*cmd[:4], "--resume", str(run), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert len((run / "metrics.csv").read_text().splitlines()) == 9
    assert (run / "model.pt").exists()
