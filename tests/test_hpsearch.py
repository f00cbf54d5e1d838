"""cifarlab search: trials are runs, the search resumes after kill -9, pruning stops bad trials,
best.yaml reruns the best trial, and bad space files fail in one line."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import cifarlab as cl
from cifarlab.cli import main
from cifarlab.hpsearch.space import read_space

pytest.importorskip("optuna")

# 4 classes x 120 images, 20% held out: 384 train / 96 val; a base epoch takes about half a second.
QUICK = ["--set", "batch_size=32", "--set", "val_fraction=0.2", "--set", "device=cpu"]
QUICK_KW: dict[str, Any] = {"batch_size": 32, "val_fraction": 0.2, "device": "cpu"}



@pytest.fixture(scope="module")
def toy_search(toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 4-trial search of the base recipe's default space, 2 epochs a trial, through the CLI."""
    out = tmp_path_factory.mktemp("search") / "s"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["search", "--recipe", "base", "--data", str(toy_data), "--trials", "4",
                     "--set", "epochs=2", *QUICK, "--out", str(out), "--json"])
    assert code == 0
    return {"out": out, "json": json.loads(buffer.getvalue())}


def test_search_runs_and_writes_its_results(toy_search: dict[str, Any]) -> None:
    out, printed = toy_search["out"], toy_search["json"]
    trials = printed["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2, 3]
    assert all(t["state"] in ("complete", "pruned") for t in trials)
    assert trials[0]["baseline"] and trials[0]["lr"] == 0.001  # trial 0: the recipe's own values
    for t in trials:  # each trial is a normal run directory, trained with its sampled settings
        run = cl.load(t["run"])
        assert Path(t["run"]).parent == out and run.config.lr == t["lr"]
        assert run.config.epochs == 2 and run.config.augment.flip == t["augment.flip"]
        assert max(r["val_acc"] for r in run.history) == pytest.approx(t["val_acc"])
    best = printed["best"]
    assert best["val_acc"] == max(t["val_acc"] for t in trials if t["state"] == "complete")
    for name in ("best.yaml", "trials.csv", "trials.json", "history.png", "importance.png",
                 "curves.png", "search.html", "search.json", "study.db"):
        assert (out / name).is_file(), name
    assert (out / "trials.csv").read_text().count("\n") == 5
    page = (out / "search.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "http" not in page  # self-contained
    search = cl.Search(out)
    assert search.best == best and "best:" in search.verdict()
    assert search.best_config.lr == best["lr"]
    assert len(search.importances()) == 5  # 4 finished trials: PED-ANOVA has something to say
    assert "recipe's own values" in search.table()


def test_best_yaml_reruns_the_best_trial(toy_search: dict[str, Any], tmp_path: Path) -> None:
    out, best = toy_search["out"], toy_search["json"]["best"]
    assert main(["train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "again"),
                 "--quiet"]) == 0
    again, trial = cl.load(tmp_path / "again"), cl.load(best["run"])
    assert again.config.to_dict() == trial.config.to_dict()
    # Same settings, same seed, one thread: the same numbers.
    assert [r["val_acc"] for r in again.history] == [r["val_acc"] for r in trial.history]


@pytest.mark.slow
def test_pruning_stops_bad_trials_early(toy_data: Path, tmp_path: Path) -> None:
    # Half the trials get an lr that learns nothing; trials with the good lr are all identical.
    # Seed 5 draws, after trial 0 (the recipe's lr): good, bad, bad, good, bad. The median pruner
    # waits for 3 finished trials, so trial 2 runs to the end and trials 3 and 5 are pruned at
    # their 2nd epoch; the good ones are never below the median and finish.
    search = cl.search("base", space={"lr": {"choice": [0.001, 1e-6]}}, trials=6, sampler="random",
                       sampler_seed=5, data=toy_data, out=tmp_path / "s", epochs=4, quiet=True, **QUICK_KW)
    rows = search.rows
    assert [r["lr"] for r in rows] == [0.001, 0.001, 1e-6, 1e-6, 0.001, 1e-6]
    good = [r for r in rows if r["lr"] == 0.001]
    bad_late = [r for r in rows if r["lr"] == 1e-6 and r["trial"] >= 3]
    assert all(r["state"] == "complete" and r["epochs"] == 4 for r in good)
    assert all(r["state"] == "pruned" and r["epochs"] == 2 for r in bad_late)
    assert all(r["val_acc"] < min(g["val_acc"] for g in good) for r in bad_late)
    # The pruned trials' run directories stay, stopped early, with their best and final weights.
    for r in bad_late:
        run = cl.load(r["run"])
        assert len(run.history) == 2 and run.results["stopped_early"]
        assert "pruned after epoch 2" in r["note"]
    assert "3 pruned" not in search.verdict() and "2 pruned" in search.verdict()


@pytest.mark.slow
def test_killed_search_resumes_and_finishes(toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    argv = ["search", "--recipe", "base", "--data", str(toy_data), "--trials", "5",
            "--set", "epochs=3", *QUICK, "--out", str(out), "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "cifarlab", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "trial-0002" / "metrics.csv").exists():  # trial 2 is in its epochs
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the search did not reach trial 2"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert main(["search", "--resume", str(out), "--quiet"]) == 0
    rows = cl.Search(out).rows
    finished = [r for r in rows if r["state"] in ("complete", "pruned")]
    assert len(finished) == 5  # the requested number, despite the lost trial
    assert rows[2]["state"] == "fail" and (out / "trial-0002").is_dir()  # lost, folder kept
    assert [r["trial"] for r in rows] == list(range(6))
    # The resumed sampler draws anew (not trial 1's settings again).
    assert len({(r["lr"], r["label_smoothing"]) for r in rows}) == 6


@pytest.mark.slow
def test_two_jobs_share_one_study(toy_data: Path, tmp_path: Path) -> None:
    search = cl.search("base", trials=2, jobs=2, data=toy_data, out=tmp_path / "s", epochs=1,
                       quiet=True, **QUICK_KW)
    rows = search.rows
    # Two workers that check the count at the same moment may both start one more: at most
    # jobs - 1 trials over.
    assert 2 <= len(rows) <= 3 and all(r["state"] == "complete" for r in rows)
    assert len({r["run"] for r in rows}) == len(rows) and (tmp_path / "s" / "search.html").is_file()


@pytest.mark.slow
def test_one_finished_trial_has_no_importance_yet(toy_data: Path, tmp_path: Path) -> None:
    search = cl.search("base", space={"lr": {"log_uniform": [1e-4, 1e-2]}}, trials=1,
                       data=toy_data, out=tmp_path / "s", epochs=1, quiet=True, **QUICK_KW)
    assert search.importances() == {}
    from cifarlab.plots import to_png

    assert to_png(search.plot_importance()).startswith(b"\x89PNG")
    assert (tmp_path / "s" / "importance.png").is_file()


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("cifarlab: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("text, message", [
    ("lrr: {log_uniform: [1e-4, 1e-2]}", "unknown setting 'lrr' (did you mean 'lr'?)"),
    ("augment.flipp: {choice: [true, false]}", "did you mean 'augment.flip'?"),
    ("lr: {loguniform: [1e-4, 1e-2]}", "unknown kind 'loguniform' (did you mean 'log_uniform'?)"),
    ("lr: {log_uniform: [0, 1e-2]}", "needs a positive low end"),
    ("lr: {uniform: [1e-2, 1e-4]}", "needs low < high"),
    ("lr: {uniform: [0, 1e-2]}", "--lr must be positive"),
    ("lr: {uniform: [1e-4]}", "needs two numbers"),
    ("lr: 0.01", "fixed values go in --set"),
    ("epochs: {uniform: [5, 20]}", "'epochs' is a whole number: use {int: [5, 20]}"),
    ("optimizer: {uniform: [0, 1]}", "'optimizer' is a str: use {choice: [...]}"),
    ("optimizer: {choice: [adam, adamw]}", "unknown optimizer 'adamw'"),
    ("augment.flip: {choice: [true, maybe]}", "setting 'augment.flip' expects bool, got 'maybe'"),
    ("val_fraction: {uniform: [0.1, 0.2]}", "all trials validate on the same images"),
    ("lr: {log_uniform: [1e-4, 1e-2]", "is not valid YAML"),
    ("{}", "the search space is empty"),
    ("- lr", "must hold a mapping"),
])
def test_bad_space_files_fail_in_one_line(text: str, message: str, toy_data: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(text + "\n")
    out = tmp_path / "s"
    assert main(["search", "--recipe", "base", "--space", str(space), "--data", str(toy_data),
                 "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert message in err and str(space) in err
    assert not out.exists()  # nothing was started


@pytest.mark.parametrize("argv, message", [
    (["--set", "lr=0.01"], "lr: both fixed (--set/--config) and searched"),
    (["--set", "budget=60"], "'budget' cannot be fixed in a search"),
    (["--sampler", "grid"], "invalid choice"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--budget", "soon"], "cannot read the budget 'soon'"),
    (["--recipe", "nope"], "unknown recipe 'nope'"),
    (["--resume", "/no/such/search"], "is not a cifarlab search"),
])
def test_search_user_errors(argv: list[str], message: str, toy_data: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    code = None
    try:
        code = main(["search", "--data", str(toy_data), "--out", str(tmp_path / "s"), *argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_resume_refuses_a_new_setup(toy_search: dict[str, Any],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "--resume", str(toy_search["out"]), "--set", "lr=0.1"]) == 2
    assert "continues a search as it was set up" in one_line_error(capsys)


def test_space_reads_yaml_numbers_and_the_default_space(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"  # YAML reads 1e-4 (no dot) as text; the space takes it as a number
    space.write_text("lr: {log_uniform: [1e-4, 1e-2]}\nbatch_size: {log_int: [32, 256]}\n"
                     "optimizer: {choice: [adam, sgd]}\nmodel_kwargs.width: {int: [8, 32]}\n")
    params = {p.key: p for p in read_space(space, "base")}
    assert params["lr"].values == (1e-4, 1e-2) and params["batch_size"].kind == "log_int"
    assert params["optimizer"].values == ("adam", "sgd")
    defaults = read_space(None, "fast")
    assert {p.key for p in defaults} >= {"lr", "weight_decay"}
    assert main(["search", "--print-space", "--recipe", "base"]) == 0


def test_missing_optuna_is_one_line(monkeypatch: pytest.MonkeyPatch, toy_data: Path,
                                    tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now fails
    with pytest.raises(cl.UserError, match=r"needs optuna: pip install 'optuna>=3.6'"):
        cl.search("base", data=toy_data, out=tmp_path / "s")


def test_help_needs_neither_torch_nor_optuna() -> None:
    code = ("import sys\nfrom cifarlab.cli import main\n"
            "for cmd in ('search', 'lr-find'):\n"
            "    try:\n        main([cmd, '--help'])\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules and 'optuna' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
