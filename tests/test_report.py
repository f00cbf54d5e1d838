"""`cifarlab report` on a real (tiny) run: a base CNN trained 2 epochs on 160 synthetic images.

The synthetic data (10 classes named like CIFAR-10's, one noisy colour each) and its decoded cache
live in pytest's temporary folder, so these tests need neither the CIFAR archive nor ~/.cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab import fsio, plots
from cifarlab.calibrate import calibration
from cifarlab.checkpoint import load_model
from cifarlab.cli import main
from cifarlab.diagnose import VERDICTS
from cifarlab.errors import UserError
from cifarlab.evaluate import (
    evaluate_split,
    evaluation_split,
)
from cifarlab.report import read_run, write_report
from cifarlab.rundir import FINAL as MODEL_FILE
from conftest import make_run

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FIGURES = ["curves.png", "confusion_matrix.png", "reliability.png", "samples.png", "mistakes.png"]


@pytest.fixture(scope="session")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("report-run")


@pytest.fixture(scope="session")
def run(run_root: Path) -> Path:
    return make_run(run_root)


@pytest.fixture(autouse=True)
def _private_cache(run_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(run_root / "xdg-cache"))


@pytest.fixture(scope="session")
def report(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(run.parent / "xdg-cache"))
        write_report(run, out, device="cpu")
    return out


def test_report_writes_every_file(report: Path) -> None:
    for name in FIGURES:
        with Image.open(report / name) as image:
            image.verify()
            assert image.format == "PNG" and image.width >= 500 and image.height >= 300, name
    metrics = json.loads((report / "metrics.json").read_text())
    confusion = json.loads((report / "confusion.json").read_text())
    counts = np.array(confusion["counts"])
    assert confusion["classes"] == CLASSES and counts.shape == (10, 10)
    assert metrics["split"] == "val" and counts.sum() == metrics["images"] == 40
    assert metrics["accuracy"] == pytest.approx(np.trace(counts) / counts.sum())
    assert np.allclose(np.array(confusion["row_normalized"]).sum(1), 1.0)
    assert list(metrics["per_class"]) == CLASSES
    assert all(set(s) == {"precision", "recall", "f1", "support"} for s in metrics["per_class"].values())
    assert 0.0 <= metrics["ece"] <= 1.0
    assert metrics["diagnosis"]["verdict"] in VERDICTS
    assert "skipped" not in metrics


def test_report_accuracy_matches_training_and_evaluate(run: Path, report: Path) -> None:
    """The report's val accuracy is the best epoch's (best weights by default), and what
    `cifarlab evaluate` computes."""
    metrics = json.loads((report / "metrics.json").read_text())
    model, record = load_model(run)
    _, split = evaluation_split(record, None, "val")
    assert evaluate_split(model, split, torch.device("cpu"))["accuracy"] == pytest.approx(metrics["accuracy"])
    assert metrics["weights"] == "best" and metrics["epoch"] == record["epoch"]
    best = read_run(run).history[record["epoch"] - 1]
    assert best["val_acc"] == pytest.approx(metrics["accuracy"], abs=1e-5)


def test_html_is_self_contained(report: Path) -> None:
    page = (report / "report.html").read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert "http://" not in page and "https://" not in page
    for text in ("Diagnosis", "Final metrics", "Per-class scores", "Most confused pairs", "ECE",
                 "clean train accuracy", "automobile", "Configuration"):
        assert text in page


@pytest.mark.slow
def test_cli_report_on_the_test_split_into_the_run(run: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    assert main(["report", str(copy), "--split", "test", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "verdict:" in out and "clean train accuracy" in out and "val loss lowest at epoch" in out
    assert "test: accuracy" in out and str(copy / "report" / "report.html") in out
    metrics = json.loads((copy / "report" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["images"] == 50


def test_cli_several_runs_into_one_out_folder(run: Path, tmp_path: Path) -> None:
    """Each run gets OUT/<run name>/ (runs without a model, so that only the curves are drawn)."""
    runs = [Path(shutil.copytree(run, tmp_path / name, ignore=shutil.ignore_patterns(MODEL_FILE)))
            for name in ("first", "second")]
    out = tmp_path / "reports"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["first", "second"]
    assert all((out / name / "report.html").is_file() for name in ("first", "second"))


def test_cli_several_runs_with_one_name_and_out_is_an_error(run: Path, tmp_path: Path) -> None:
    twin = shutil.copytree(run, tmp_path / run.name, ignore=shutil.ignore_patterns(MODEL_FILE))
    assert main(["report", str(run), str(twin), "--out", str(tmp_path / "reports")]) == 2
    assert not (tmp_path / "reports").exists()


def test_unfinished_run_still_gets_curves_and_diagnosis(run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    unfinished = Path(shutil.copytree(run, tmp_path / "unfinished"))
    (unfinished / MODEL_FILE).unlink()
    assert main(["report", str(unfinished)]) == 0
    out = unfinished / "report"
    assert sorted(p.name for p in out.iterdir()) == [fsio.OUTPUTS_FILE, "curves.png", "metrics.json",
                                                     "report.html"]
    assert "skipped" in json.loads((out / "metrics.json").read_text())
    page = (out / "report.html").read_text()
    assert "Skipped." in page and "no model.pt" in page and page.count("data:image/png") == 1
    captured = capsys.readouterr()
    assert "verdict:" in captured.out
    assert "were skipped" in captured.err


def test_out_never_replaces_files_cifarlab_did_not_write(run: Path, tmp_path: Path) -> None:
    """Issue 12: report --out into a folder of the user's replaced their report.html and others."""
    unfinished = Path(shutil.copytree(run, tmp_path / "unfinished"))
    (unfinished / MODEL_FILE).unlink()  # curves and diagnosis only: quick
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.html").write_text("my notes")
    with pytest.raises(UserError, match=r"report\.html exists and was not written by cifarlab"):
        write_report(unfinished, out)
    assert [p.name for p in out.iterdir()] == ["report.html"]  # nothing written at all
    assert (out / "report.html").read_text() == "my notes"
    (out / "report.html").unlink()
    write_report(unfinished, out)
    write_report(unfinished, out)  # its own files, unchanged: replaced
    (out / "curves.png").write_bytes(b"edited by hand")
    with pytest.raises(UserError, match=r"curves\.png exists"):
        write_report(unfinished, out)
    assert (out / "curves.png").read_bytes() == b"edited by hand"
    (unfinished / "report").mkdir()  # the run's own report folder is cifarlab's, as before
    (unfinished / "report" / "report.html").write_text("an older report")
    assert write_report(unfinished).out == unfinished / "report"


def test_bad_run_directories_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == (f"cifarlab: error: run or model not found: "
                                               f"{tmp_path / 'nope'} (a run directory or a model file)")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a cifarlab run: it has no metrics.csv" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "metrics.csv").write_text("epoch,val_acc\n1,0.5\n")
    with pytest.raises(UserError, match="has no column 'train_loss'"):
        read_run(tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,train_loss,train_acc,train_acc_clean,val_loss,val_acc,"
                                          "lr,seconds,train_seconds\n")
    with pytest.raises(UserError, match="no finished epoch"):
        read_run(tmp_path)


def test_data_without_the_split_or_with_other_classes(run: Path, run_root: Path, tmp_path: Path) -> None:
    train_only = tmp_path / "train-only"
    shutil.copytree(run_root / "data" / "train", train_only)
    with pytest.raises(UserError, match="has no 'test' split"):
        write_report(run, tmp_path / "out", data=str(train_only), split="test")
    shutil.rmtree(train_only / "truck")
    with pytest.raises(UserError, match="classes"):
        write_report(run, tmp_path / "out", data=str(train_only))


# ---------------------------------------------------------------------------------------------
# The scores, on numbers worked out by hand


def test_image_grid_without_images() -> None:
    """A model with no mistakes still gets a mistakes.png."""
    png = plots.to_png(plots.image_grid(np.zeros((0, 32, 32, 3), np.uint8), [], [],
                                        "No wrong predictions on val"))
    assert png.startswith(b"\x89PNG")


def test_class_and_run_names_are_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: a class folder named `$\\foo$` crashed report (matplotlib's mathtext), and
    `a$b$c` rendered as math. Every figure draws names as they are."""
    from matplotlib.text import Text

    names = ["$\\foo$", "a$b$c"]
    history = [{"epoch": e, "train_loss": 1.0, "val_loss": 1.1, "train_acc": 0.5, "train_acc_clean": 0.55,
                "val_acc": 0.5, "lr": 0.1, "seconds": 1.0, "train_seconds": 1.0} for e in (1, 2)]
    figures = [
        plots.confusion(np.array([[3, 1], [0, 4]]), names, f"Confusion matrix: {names[0]}"),
        plots.image_grid(np.zeros((2, 32, 32, 3), np.uint8), [f"pred: {n}" for n in names],
                         [True, False], names[1]),
        plots.curves(history, f"run {names[0]}", 1),
        plots.val_curves([(names[0], history), (names[1], history)]),
        plots.reliability(calibration(np.array([0.6, 0.9]), np.array([True, False])), names[1]),
    ]
    drawn: list[Text] = []
    for fig in figures:
        plots.to_png(fig)  # tick labels only exist once the figure is drawn
        drawn.extend(t for t in fig.findobj(Text) if t.get_text())
    texts = {t.get_text() for t in drawn}
    assert {"$\\foo$", "a$b$c", "pred: a$b$c"} <= texts
    assert not [t.get_text() for t in drawn if t.get_parse_math() or t.get_usetex()]


def test_calibration_error() -> None:
    perfect = calibration(np.array([0.5, 0.5, 1.0, 1.0]), np.array([True, False, True, True]), bins=10)
    assert perfect["ece"] == pytest.approx(0.0)
    over = calibration(np.array([0.9, 0.9, 0.9, 0.9]), np.array([True, False, False, True]), bins=10)
    assert over["ece"] == pytest.approx(0.4)
    assert sum(over["count"]) == 4 and over["count"][8] == 4  # 0.9 falls in (0.8, 0.9]
