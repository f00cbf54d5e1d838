"""`cifarlab compare` on hand-written run directories (config.json + metrics.csv, no model)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from cifarlab.cli import main
from cifarlab.comparison import compare_rows, format_rows, write_chart
from cifarlab.errors import UserError
from cifarlab.report import read_run
from cifarlab.rundir import METRIC_COLUMNS
from crafted import ODD_RUN_FILES, big_metrics, write_run


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        write_run(tmp_path / "seed-base", "base", "base", [0.6, 0.7, 0.8], [0.6, 0.66, 0.69],
                  val_loss=[1.0, 0.9, 1.1]),
        write_run(tmp_path / "seed-robust", "robust", "base_dropout", [0.5, 0.6, 0.7], [0.5, 0.6, 0.68],
                  seconds=40.0),
    ]


def test_rows_hold_the_comparison_table(runs: list[Path]) -> None:
    rows = compare_rows([read_run(p) for p in runs])
    base, robust = rows
    assert base["run"] == "seed-base" and base["model_recipe"] == "base"
    assert robust["model_recipe"] == "base_dropout/robust"
    assert base["epochs"] == 3
    assert base["train_acc"] == pytest.approx(0.76)
    assert base["train_acc_clean"] == pytest.approx(0.8)
    assert base["val_acc"] == pytest.approx(0.69)
    assert base["gap"] == pytest.approx(0.11)
    assert base["diagnosis"] == "overfitting"
    assert robust["diagnosis"] == "good generalization"
    assert robust["seconds_per_epoch"] == pytest.approx(40.0)


def test_formats(runs: list[Path]) -> None:
    rows = compare_rows([read_run(p) for p in runs])
    table = format_rows(rows, "table").splitlines()
    assert table[0].split()[:2] == ["run", "model/recipe"]
    assert "80.0%" in table[1] and "69.0%" in table[1] and "+11.0 pts" in table[1]
    assert "overfitting" in table[1]

    markdown = format_rows(rows, "markdown").splitlines()
    assert markdown[0].startswith("| run | model/recipe | seed | epochs |")
    assert set(markdown[1].replace("|", "").split()) == {"---", "---:"}
    assert len(markdown) == 4

    parsed = list(csv.DictReader(io.StringIO(format_rows(rows, "csv"))))
    assert [r["run"] for r in parsed] == ["seed-base", "seed-robust"]
    assert float(parsed[0]["gap"]) == pytest.approx(0.11)

    assert json.loads(format_rows(rows, "json")) == rows


def test_table_columns_line_up(runs: list[Path]) -> None:
    lines = format_rows(compare_rows([read_run(p) for p in runs]), "table").splitlines()
    # Right-aligned numbers end in the same column: the "val acc" header ends where its values end.
    end = lines[0].index("val acc") + len("val acc")
    assert all(line[end - 1] == "%" for line in lines[1:])


def test_cli_writes_a_chart_only_when_asked(runs: list[Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *map(str, runs), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert list(tmp_path.glob("*.png")) == []
    chart = tmp_path / "charts" / "val.png"
    assert main(["compare", *map(str, runs), "--format", "markdown", "--chart", str(chart)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("| run |") and str(chart) in captured.err
    with Image.open(chart) as image:
        assert image.width > 600 and image.height > 300


def test_chart_never_replaces_a_compare_png_cifarlab_did_not_write(runs: list[Path], tmp_path: Path) -> None:
    (tmp_path / "compare.png").write_bytes(b"the user's own chart")
    with pytest.raises(UserError, match="compare.png exists and was not written by cifarlab"):
        write_chart([read_run(p) for p in runs], tmp_path)
    assert (tmp_path / "compare.png").read_bytes() == b"the user's own chart"
    (tmp_path / "compare.png").unlink()
    for _ in range(2):  # its own chart is replaced
        assert write_chart([read_run(p) for p in runs], tmp_path) == tmp_path / "compare.png"


def test_cli_skips_folders_that_are_not_runs(runs: list[Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes").mkdir()
    assert main(["compare", *map(str, runs), str(tmp_path / "notes"), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 3  # header + 2 runs
    assert f"skipped {tmp_path / 'notes'}: not a cifarlab run" in captured.err


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_cli_with_no_run_at_all_is_an_error(make: Callable[[Path], Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "no runs to compare" in err and "Traceback" not in err


def test_best_epoch_and_tta_columns_come_from_the_run(tmp_path: Path) -> None:
    fast = write_run(tmp_path / "fast", "fast", "fastnet", [0.9, 0.95], [0.88, 0.87],
                     summary={"val_acc_tta": 0.9, "best_weights_epoch": 1})
    [row] = compare_rows([read_run(fast)])
    assert row["best_val_acc"] == pytest.approx(0.88) and row["best_epoch"] == 1
    assert row["val_acc_tta"] == pytest.approx(0.9) and row["best_weights_epoch"] == 1
    table = format_rows([row], "table").splitlines()
    assert "best val acc" in table[0] and "val acc TTA" in table[0] and "90.0%" in table[1]


def test_runs_are_named_by_the_shortest_distinct_path(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    paths = [write_run(tmp_path / "trials-a" / "seed-0", "base", "base", [0.7], [0.6]),
             write_run(tmp_path / "trials-b" / "seed-0", "bn", "bn", [0.7], [0.65]),
             write_run(tmp_path / "trials-b" / "seed-1", "bn", "bn", [0.7], [0.66])]
    assert main(["compare", *map(str, paths), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows] == ["trials-a/seed-0", "trials-b/seed-0", "seed-1"]
    assert [r["seed"] for r in rows] == [0, 0, 0] and rows[1]["model_recipe"] == "bn"


def test_epochs_without_evaluation_leave_empty_cells(tmp_path: Path) -> None:
    """eval_every: skipped epochs have empty val and clean cells; the row reads the last evaluated."""
    run = write_run(tmp_path / "sparse", "base", "base", [None, 0.7, None, 0.72, None],
                    [None, 0.66, None, 0.70, None])
    [row] = compare_rows([read_run(run)])
    assert row["epochs"] == 5 and row["val_acc"] == pytest.approx(0.70)
    assert row["train_acc_clean"] == pytest.approx(0.72) and row["best_epoch"] == 4
    assert row["gap"] == pytest.approx(0.02)
    assert json.loads(format_rows([row], "json"))[0]["val_acc"] == pytest.approx(0.70)
    assert "nan" not in format_rows([row], "table").lower()
    write_chart([read_run(run)], tmp_path)  # the chart draws the evaluated epochs


def test_a_run_without_validation_compares(tmp_path: Path) -> None:
    final = write_run(tmp_path / "final-fit", "base", "base", [0.8, 0.9], [None, None])
    [row] = compare_rows([read_run(final)])
    assert row["val_acc"] is None and row["gap"] is None and row["diagnosis"] == "no validation"
    assert "no validation" in format_rows([row], "table")


def test_crafted_columns_are_the_ledgers() -> None:
    from crafted import METRIC_COLUMNS as CRAFTED

    assert CRAFTED == METRIC_COLUMNS


def test_compare_reads_a_bounded_part_of_metrics_csv(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22, item 10: an 18 MB metrics.csv (a million short rows) was held as dicts at ~33x
    its size (560 MB); a run cifarlab can resume holds at most ~13,000 epochs."""
    import tracemalloc

    run = write_run(tmp_path / "big")
    (run / "metrics.csv").write_text(big_metrics(18 << 20))
    tracemalloc.start()
    try:
        code = main(["compare", str(run)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "larger than 4,096 KB" in err, err
    assert peak < 32 << 20, f"peak {peak >> 20} MB"
    (run / "metrics.csv").write_text(big_metrics(3 << 20))  # under 4 MB: ~170,000 epochs
    assert main(["compare", str(run)]) == 2
    assert "holds more than 20,000 epochs" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(ODD_RUN_FILES))
def test_odd_run_folder_values_are_one_line(name: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22, item 12: a NaN or inf epoch, a config that is not a mapping, an empty robustness
    table, a CSV field over 128 KB ... were tracebacks in compare and report."""
    run = write_run(tmp_path / "run", summary={"val_acc_tta": 0.7})
    for file, text in ODD_RUN_FILES[name].items():
        (run / file).parent.mkdir(exist_ok=True)
        (run / file).write_text(text)
    assert main(["compare", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cifarlab: error:"), err
    code = main(["report", str(run), "--quiet"])  # report reads all but summary.json
    err = capsys.readouterr().err.strip()
    assert code == (0 if name.startswith("summary") else 2), err
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("cifarlab: error:"), err


@pytest.mark.parametrize("width", [60, 80, 100, 120])
def test_the_text_table_fits_the_width_and_names_what_it_hides(runs: list[Path], width: int) -> None:
    rows = compare_rows([read_run(p) for p in runs])
    full = format_rows(rows, "table")
    assert max(map(len, full.splitlines())) > 120  # every column does not fit any of these widths
    fitted = format_rows(rows, "table", width)
    assert max(map(len, fitted.splitlines())) <= width
    for always in ("run", "gap", "diagnosis", "seed-base", "overfitting"):
        assert always in fitted
    assert "more columns with --wide: " in " ".join(fitted.splitlines())
    assert format_rows(rows, "table", 1000) == full  # wide enough: unchanged


def test_the_api_comparison_fits_too_and_wide_shows_all(runs: list[Path]) -> None:
    import cifarlab as cl

    comparison = cl.compare(runs)
    narrow = comparison.format("table", width=80)
    assert max(map(len, narrow.splitlines())) <= 80 and "wide=True" in narrow
    assert comparison.format("table", wide=True) == format_rows(comparison.rows, "table")


def test_cli_wide_prints_every_column(runs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", *map(str, runs), "--wide"]) == 0
    out = capsys.readouterr().out
    assert "train acc (Keras)" in out and "s/epoch" in out and "more columns" not in out


def test_chart_leaves_its_ledger_beside_the_chart_not_here(runs: list[Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["compare", *map(str, runs), "--chart", str(tmp_path / "charts" / "val.png")]) == 0
    assert list(here.iterdir()) == []
    assert (tmp_path / "charts" / ".cifarlab-outputs.json").is_file()
def test_epochs_without_evaluation_compare_and_chart(tmp_path: Path) -> None:
    """eval_every leaves empty cells in the skipped epochs: best and chart read the measured ones."""
    sparse = write_run(tmp_path / "sparse", "fast", "fastnet", [None, 0.8, None, 0.95],
                       [None, 0.82, None, 0.81])
    [row] = compare_rows([read_run(sparse)])
    assert row["val_acc"] == pytest.approx(0.81) and row["best_val_acc"] == pytest.approx(0.82)
    assert row["best_epoch"] == 2 and row["gap"] == pytest.approx(0.14)
    out = tmp_path / "out"
    out.mkdir()
    assert Image.open(write_chart([read_run(sparse)], out)).size[0] > 100
