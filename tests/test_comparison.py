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


def write_run(path: Path, recipe: str, model: str, clean: list[float], val: list[float | None],
              seconds: float = 30.0, summary: dict[str, object] | None = None) -> Path:
    """A run directory as `cifarlab train` leaves it, minus the model files. A val of None is an
    empty cell, as a run with --val-fraction 0 writes it."""
    path.mkdir(parents=True)
    config = {"recipe": recipe, "model": model, "epochs": len(val), "seed": 0}
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    (path / "config.json").write_text(json.dumps({"config": config, "classes": ["a", "b"]}))
    with (path / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for i, (c, v) in enumerate(zip(clean, val, strict=True)):
            writer.writerow({"epoch": i + 1, "train_loss": 1.0, "train_acc": c - 0.04, "train_acc_clean": c,
                             "val_loss": "" if v is None else 1.0, "val_acc": "" if v is None else v,
                             "lr": 1e-3, "seconds": seconds,
                             "train_seconds": seconds - 2})
    return path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        write_run(tmp_path / "seed-base", "base", "base", [0.6, 0.7, 0.8], [0.6, 0.66, 0.69]),
        write_run(tmp_path / "seed-robust", "robust", "base_dropout", [0.5, 0.6, 0.7], [0.5, 0.6, 0.68],
                  seconds=40.0),
    ]


def test_rows_hold_the_seed_table(runs: list[Path]) -> None:
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


def test_a_run_without_validation_compares(tmp_path: Path) -> None:
    final = write_run(tmp_path / "final-fit", "base", "base", [0.8, 0.9], [None, None])
    [row] = compare_rows([read_run(final)])
    assert row["val_acc"] is None and row["gap"] is None and row["diagnosis"] == "no validation"
    assert "no validation" in format_rows([row], "table")
