"""Callbacks that log elsewhere: MLflow against a real local store (SQLite, and PostgreSQL once),
read back with MLflow's own client, as `mlflow ui` would show it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import cifarlab as cl
from cifarlab.cli import main

QUICK = ["--batch-size", "32", "--val-fraction", "0.2", "--device", "cpu"]


def runs_of(uri: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return list(client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"]))


def artifacts(uri: str, run_id: str, path: str | None = None) -> list[str]:
    from mlflow.tracking import MlflowClient

    return sorted(a.path for a in MlflowClient(uri).list_artifacts(run_id, path))


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


@pytest.mark.slow
def test_mlflow_logs_a_run_and_its_resume(mlflow_store: str, mlflow_experiment: str,
                                          toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "r1"
    assert main(["train", "--recipe", "base", "--data", str(toy_data), "--epochs", "2", *QUICK,
                 "--out", str(out), "--name", "first look", "--mlflow", mlflow_store, "--quiet"]) == 0
    run = cl.load(out)
    [logged] = runs_of(mlflow_store, mlflow_experiment)
    info, data = logged.info, logged.data
    assert info.status == "FINISHED" and info.run_name == "first look"  # the run's name (--name)
    assert data.tags["cifarlab.name"] == "first look" and data.tags["cifarlab.run"] == str(out.resolve())
    # Settings: every one, flat, as config.json has them.
    config = json.loads((out / "config.json").read_text())["config"]
    assert data.params["lr"] == "0.001" and data.params["epochs"] == "2"
    assert data.params["augment.flip"] == json.dumps(config["augment"]["flip"])
    assert data.params["train_images"] == str(len(run.history) and 384)
    # Metrics per epoch, step = epoch, exactly metrics.csv's; the final figures from summary.json.
    assert history(mlflow_store, info.run_id, "val_acc") == [
        (int(r["epoch"]), pytest.approx(r["val_acc"])) for r in run.history]
    assert data.metrics["best_val_acc"] == pytest.approx(run.results["best_val_acc"])
    assert data.metrics["temperature"] == pytest.approx(run.results["temperature"])
    # The diagnosis (a tag to filter by, the reasons as the run's description) and the files.
    assert data.tags["cifarlab.diagnosis"] == run.diagnosis().verdict
    assert data.tags["mlflow.note.content"].startswith(f"verdict: {run.diagnosis().verdict}")
    assert artifacts(mlflow_store, info.run_id) == ["config.json", "diagnosis.json", "metrics.csv",
                                                     "report", "summary.json"]
    report = artifacts(mlflow_store, info.run_id, "report")
    assert {"report/report.html", "report/curves.png", "report/confusion_matrix.png"} <= set(report)

    # Extended by resume: the same MLflow run goes on (one run, three epochs of metrics).
    assert main(["train", "--resume", str(out), "--epochs", "3", "--mlflow", mlflow_store,
                 "--quiet"]) == 0
    [again] = runs_of(mlflow_store, mlflow_experiment)
    assert again.info.run_id == info.run_id and again.info.status == "FINISHED"
    assert [s for s, _ in history(mlflow_store, info.run_id, "val_acc")] == [1, 2, 3]


@pytest.mark.slow
def test_mlflow_nests_search_trials_under_their_study(mlflow_store: str, mlflow_experiment: str,
                                                      toy_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)  # what MLflow users set; mlflow=True
    search = cl.search("base", space={"lr": {"log_uniform": [1e-4, 1e-2]}}, trials=2, epochs=1,
                       data=toy_data, out=tmp_path / "s", quiet=True, mlflow=True, batch_size=32,
                       val_fraction=0.2, device="cpu")
    runs = runs_of(mlflow_store, mlflow_experiment)
    [study] = [r for r in runs if r.data.tags.get("cifarlab.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("cifarlab.kind") == "trial"]
    assert study.info.run_name == "s" and study.info.status == "FINISHED"
    assert study.data.metrics["best_val_acc"] == pytest.approx(search.best["val_acc"])
    assert "search.html" in artifacts(mlflow_store, study.info.run_id)
    assert sorted(int(t.data.tags["cifarlab.trial"]) for t in trials) == [0, 1]
    for trial in trials:  # nested: the UI shows them under the study, and compares them
        row = search.rows[int(trial.data.tags["cifarlab.trial"])]
        assert trial.data.tags["mlflow.parentRunId"] == study.info.run_id
        assert trial.info.status == "FINISHED" and trial.data.tags["cifarlab.trial_state"] == row["state"]
        assert float(trial.data.params["lr"]) == pytest.approx(row["lr"])
        assert trial.data.metrics["best_val_acc"] == pytest.approx(row["val_acc"])
        assert trial.data.tags["cifarlab.run"] == row["run"]


def test_missing_mlflow_is_one_line(monkeypatch: pytest.MonkeyPatch, toy_data: Path,
                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now fails
    assert main(["train", "--recipe", "base", "--data", str(toy_data), "--out", str(tmp_path / "r"),
                 "--mlflow", "sqlite:///x.db"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("cifarlab: error: --mlflow needs mlflow: pip install mlflow (or: pip install "
                   "'cifarlab[mlflow]')")
    assert not (tmp_path / "r").exists()  # nothing started
    with pytest.raises(cl.UserError, match=r"pip install 'cifarlab\[mlflow\]'"):
        cl.callbacks.MLflow()


@pytest.mark.slow  # importing mlflow alone takes ~4 s
@pytest.mark.parametrize("uri, message", [
    ("postgresql+psycopg://lab@127.0.0.1:1/runs",
     "cannot reach the MLflow store postgresql+psycopg://lab@127.0.0.1:1/runs: connection failed"),
    ("http://127.0.0.1:1", "cannot log to the MLflow store http://127.0.0.1:1: no tracking server "
                           "answers there (Connection refused)"),
    ("postgresql+psycopg2://lab:secret@127.0.0.1:1/runs",
     "--mlflow postgresql+psycopg2://lab:***@127.0.0.1:1/runs needs the PostgreSQL driver psycopg2"),
])
def test_unreachable_mlflow_store_is_one_line(uri: str, message: str, toy_data: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mlflow")
    if "psycopg2" in uri and __import__("importlib").util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed here")
    assert main(["train", "--recipe", "base", "--data", str(toy_data), "--out", str(tmp_path / "r"),
                 "--mlflow", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cifarlab: error: {message}") and "\n" not in err, err
    assert "secret" not in err and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_mlflow_on_postgres(postgres_url: str, mlflow_experiment: str, toy_data: Path,
                            tmp_path: Path) -> None:
    """The store a team shares: MLflow's tables in PostgreSQL (conftest's server), through the
    callback object itself."""
    tracker = cl.callbacks.MLflow(postgres_url, report=False)
    run = cl.train("base", data=toy_data, epochs=1, out=tmp_path / "pg", quiet=True,
                   callbacks=[tracker], batch_size=32, val_fraction=0.2, device="cpu")
    [logged] = runs_of(postgres_url, mlflow_experiment)
    assert logged.info.run_id == tracker.run_id and logged.info.status == "FINISHED"
    assert logged.info.run_name == "pg" and logged.data.params["epochs"] == "1"
    assert logged.data.metrics["val_acc"] == pytest.approx(run.history[-1]["val_acc"])
    assert "summary.json" in artifacts(postgres_url, logged.info.run_id)
