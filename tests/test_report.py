"""`cifarlab report` on a real (tiny) run: a base CNN trained 2 epochs on 160 synthetic images.

The synthetic data (10 classes named like CIFAR-10's, one noisy colour each) and its decoded cache
live in pytest's temporary folder, so these tests need neither the CIFAR archive nor ~/.cache.
"""

from __future__ import annotations

import json
import re
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
from conftest import cifar100_run, make_run

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


def test_epochs_without_evaluation_leave_no_nan_on_the_page(run: Path, tmp_path: Path) -> None:
    """eval_every: the skipped epochs' val and clean cells are empty; the page reads the last
    evaluated epoch and says so, and the diagnosis counts only evaluated epochs."""
    sparse = Path(shutil.copytree(run, tmp_path / "sparse"))
    (sparse / MODEL_FILE).unlink()  # curves and diagnosis only: quick
    rows = (sparse / "metrics.csv").read_text().splitlines()
    header, first, second = rows[0], rows[1].split(","), rows[2].split(",")
    columns = header.split(",")
    skipped = [cell if columns[i] not in ("train_acc_clean", "val_loss", "val_acc") else ""
               for i, cell in enumerate(second)]
    third = [str(3) if columns[i] == "epoch" else cell for i, cell in enumerate(skipped)]
    (sparse / "metrics.csv").write_text("\n".join([header, ",".join(first), ",".join(second),
                                                   ",".join(third)]) + "\n")
    report = write_report(sparse)
    assert report.diagnosis.evaluated_epochs == 2 and report.diagnosis.epochs == 3
    page = (report.out / "report.html").read_text()
    assert not re.search(r"[>+\-]nan\b|\bnan%", page, re.I)
    assert "val accuracy (epoch 2)" in page and "3 (2 evaluated)" in page


@pytest.mark.slow
def test_a_real_short_run_still_rising_is_not_called_overfitting(shared_archive: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21's case on real images: base on 2,000 CIFAR-10 images for 3 epochs. Whatever
    the numbers, a val curve that still rises with val loss at its lowest is "still learning"
    or better, never overfitting; the sizes come from config.json."""
    import cifarlab as cl

    monkeypatch.setenv("CIFARLAB_THREADS", "1")
    run = cl.train("base", data=shared_archive, subset=2000, val_fraction=0.02, epochs=3,
                   out=tmp_path / "run", quiet=True, calibrate=False)
    d = run.diagnosis()
    assert (d.val_images, d.clean_images, d.num_classes) == (1000, 2000, 10)
    assert d.verdict in VERDICTS and d.evaluated_epochs == 3
    if d.still_rising and not d.val_loss_turned:
        assert d.verdict in ("still learning", "good generalization")
    assert d.verdict != "overfitting" or d.val_loss_turned or not d.still_rising


# ---------------------------------------------------------------------------------------------
# Many classes (CIFAR-100): the confusions summarised, the matrix of mistakes, captions that fit


@pytest.mark.slow
def test_a_100_class_report_summarises_what_it_confuses(tmp_path_factory: pytest.TempPathFactory,
                                                        tmp_path: Path) -> None:
    run = cifar100_run(tmp_path_factory)
    report = write_report(run, tmp_path / "report", device="cpu")
    assert report.evaluation is not None and len(report.evaluation["per_class"]) == 100
    assert "confusion_summary.png" in report.files
    for name in ("confusion_summary.png", "confusion_matrix.png"):
        with Image.open(tmp_path / "report" / name) as image:
            # the summary reads at page width (1100 px); the matrix opens at full size
            assert image.width <= 2200 and image.height <= 2200, (name, image.size)
    confused = report.evaluation["most_confused"]
    wrong = report.evaluation["images"] - round(report.evaluation["accuracy"] * 100)
    assert len(confused) == min(20, wrong)  # a fifth of the classes: 20 pairs, where there are
    page = (tmp_path / "report" / "report.html").read_text()
    assert "What the model confuses (val)" in page and "Confusion matrix (val, 100 classes)" in page
    assert '<a href="confusion_matrix.png">' in page and "aquarium_fish" in page


def test_the_matrix_of_many_classes_shows_the_mistakes() -> None:
    names = [f"class{i:02d}" for i in range(30)]
    counts = np.diag(np.full(30, 8))
    counts[3, 7] = 2  # one confusion: 2 of class03's 10 images taken for class07
    counts[3, 3] = 8
    fig = plots.confusion(counts, names, "30 classes")
    plots.to_png(fig)
    heat = next(ax for ax in fig.axes if ax.get_images())
    assert len(fig.axes) == 2  # one map and its colour bar, not two maps
    assert [t.get_text() for t in heat.get_xticklabels()] == names
    mistakes = heat.get_images()[-1].get_array()
    assert mistakes[3, 7] == pytest.approx(20.0) and mistakes.mask[3, 3] and mistakes.mask[0, 1]
    summary = plots.confusion_summary(counts, names, "30 classes")
    plots.to_png(summary)
    pairs, hardest = summary.axes
    assert [t.get_text() for t in pairs.get_yticklabels()] == ["class03 → class07"]
    assert hardest.get_yticklabels()[0].get_text() == "class03"  # 80%: the hardest


def test_long_class_names_shrink_captions_to_fit() -> None:
    cifar10 = ["✗ pred: automobile (100%)\ntrue: airplane"]
    assert plots.caption_size(cifar10) == 9
    coarse = [f"✗ pred: {plots.short('household_electrical_devices', 18)} (27%)\ntrue: fish"]
    assert "household_electri…" in coarse[0] and 6 <= plots.caption_size(coarse) < 8


def test_many_classes_are_drawn_as_strips_on_one_canvas() -> None:
    names = [f"c{i}" for i in range(100)]
    labels = np.repeat(np.arange(100), 3)
    fig = plots.class_grid(np.zeros((300, 32, 32, 3), np.uint8), labels, names, 3, "100 classes")
    assert len(fig.axes) == 1 and len(fig.axes[0].get_images()) == 1
    assert {t.get_text() for t in fig.axes[0].texts} == set(names)
    assert max(fig.get_size_inches()) < 20


def test_many_class_figures_draw_names_as_plain_text() -> None:
    from matplotlib.text import Text

    names = ["$\\foo$", *(f"a$b$c{i}" for i in range(24))]
    counts = np.eye(25, dtype=int) * 3 + np.roll(np.eye(25, dtype=int), 1, axis=1)
    for fig in (plots.confusion(counts, names, "m"), plots.confusion_summary(counts, names, "s"),
                plots.class_grid(np.zeros((25, 32, 32, 3), np.uint8), np.arange(25), names, 1, "g")):
        plots.to_png(fig)
        drawn = [t for t in fig.findobj(Text) if t.get_text()]
        assert any("$\\foo$" in t.get_text() for t in drawn)
        assert not [t.get_text() for t in drawn if t.get_parse_math() or t.get_usetex()]
def test_curves_draw_only_the_evaluated_epochs() -> None:
    """eval_every: NaN in the skipped epochs; the clean and val curves join the measured points."""
    nan = float("nan")
    history = [{"epoch": e, "train_loss": 2.0 - e / 10, "train_acc": e / 10,
                "train_acc_clean": c, "val_loss": 2.0 - v if v == v else nan, "val_acc": v,
                "lr": 0.1, "seconds": 1.0, "train_seconds": 1.0}
               for e, c, v in [(1, nan, nan), (2, 0.5, 0.45), (3, nan, nan), (4, 0.7, 0.6)]]
    fig = plots.curves(history, "sparse", 4)
    acc_ax = fig.axes[1]
    val_line = next(line for line in acc_ax.get_lines() if line.get_label() == "val")
    assert list(val_line.get_xdata()) == [2, 4] and list(val_line.get_ydata()) == [0.45, 0.6]
    assert plots.to_png(fig)[:4] == b"\x89PNG"
