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
    (["evaluate", "/no/such/run"], "run or model not found"),
    (["predict", "/no/such/run", "x.png"], "run or model not found"),
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


@pytest.mark.slow
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


# ---------------------------------------------------------------------------------------------
# One consistent command line (issue 11)


def test_every_option_says_its_default() -> None:
    import argparse

    from cifarlab.cli import build_parser

    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [f"{name} {'/'.join(action.option_strings)}"
               for name, sub in commands.choices.items() for action in sub._actions
               if action.option_strings and not isinstance(action, argparse._HelpAction)
               and action.help != argparse.SUPPRESS and "(default:" not in (action.help or "")]
    assert missing == []


@pytest.mark.parametrize("flag", ["--quiet", "--json", "--device", "--weights", "--tta", "--split"])
def test_shared_flags_are_spelled_the_same(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    where = {"--quiet": ["train", "evaluate", "report", "data"],
             "--json": ["train", "evaluate", "predict", "report", "compare", "export", "summary",
                        "models", "data"],
             "--device": ["train", "evaluate", "predict", "report", "compare"],
             "--weights": ["evaluate", "predict", "report", "export", "serve"],
             "--tta": ["evaluate", "predict", "report", "compare"],
             "--split": ["evaluate", "report"]}[flag]
    for command in where:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert flag in capsys.readouterr().out, command


def test_mistyped_option_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--lrr", "0.1"])
    assert exit_info.value.code == 2
    assert "did you mean '--lr'?" in capsys.readouterr().err


def test_train_json_prints_the_summary(toy_data: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(toy_data), "--epochs", "1", "--subset", "64",
                 "--out", str(tmp_path / "run"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 1 and summary["best_weights_epoch"] == 1


def test_final_fit_without_validation(toy_data: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--val-fraction 0: every training image, no val numbers, best weights = final, saying so."""
    run = tmp_path / "final"
    assert main(["train", "--data", str(toy_data), "--epochs", "2", "--batch-size", "32",
                 "--val-fraction", "0", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no validation" in out and "best.pt is not written" in out
    assert not (run / "best.pt").exists() and (run / "model.pt").exists()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[1].split(",")[4:6] == ["", ""]  # val_loss, val_acc: empty cells
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_acc"] is None and summary["best_weights_epoch"] == 2
    assert summary["train_images_per_second"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["train_images"] == 480 and config["val_images"] == 0
    assert main(["evaluate", str(run)]) == 2
    assert "--val-fraction 0" in one_line_error(capsys)
    assert main(["evaluate", str(run), "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == "final"
    assert main(["report", str(run), "--json"]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["diagnosis"]["verdict"] == "no validation" and report["skipped"]
    assert (run / "report" / "curves.png").is_file()
    page = (run / "report" / "report.html").read_text()
    assert "train accuracy (clean, eval mode)" in page and "<td>val accuracy</td>" not in page
    assert main(["compare", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["val_acc"] is None


def test_early_stop_needs_validation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--val-fraction", "0", "--early-stop", "3", "--print-config"]) == 2
    assert "--val-fraction 0" in one_line_error(capsys)


def test_evaluate_on_a_source_of_test_images_only(trained_run: Path, toy_data: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The official test set as images (cifar10/test/<class>/*) is a common download."""
    import shutil
    import tarfile

    only_test = tmp_path / "cifar10"
    shutil.copytree(toy_data / "test", only_test / "test")
    archive = tmp_path / "test-only.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(only_test, arcname="cifar10")
    for source in (only_test, archive):
        assert main(["evaluate", str(trained_run), "--data", str(source), "--split", "test",
                     "--json", "--quiet"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["split"] == "test" and result["images"] == 80
    assert main(["evaluate", str(trained_run), "--data", str(archive), "--quiet"]) == 2
    assert "pass --split test" in one_line_error(capsys)
    assert main(["train", "--data", str(archive), "--quiet"]) == 2
    assert "only a test split" in one_line_error(capsys)


def test_errors_in_our_own_words(trained_run: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image at all")
    assert main(["predict", str(trained_run), str(not_image)]) == 2
    err = one_line_error(capsys)
    assert "BytesIO" not in err and "0x" not in err and "not an image" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "--data", str(empty)]) == 2
    captured = capsys.readouterr()
    assert "decoding" not in captured.out and "no images found" in captured.err


def test_compare_tta_measures_what_the_summary_lacks(trained_run: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(trained_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["val_acc_tta"] is None
    assert main(["compare", str(trained_run), "--tta", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert 0 <= row["val_acc_tta"] <= 1 and row["best_epoch"] in (1, 2)


class _Pickled:
    """Any class: a file holding one can only be loaded by running code."""


def test_unsafe_checkpoint_is_refused_in_our_words(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    hostile = tmp_path / "model.pt"
    torch.save({"format": "cifarlab-model", "payload": _Pickled()}, hostile)
    assert main(["evaluate", str(hostile)]) == 2
    err = one_line_error(capsys)
    assert "refused" in err and "weights_only" not in err and "0x" not in err
