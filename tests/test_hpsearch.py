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
    # a 1-epoch trial is one point per trial: drawn with a marker, or the chart is empty
    [line] = [line for line in search.plot_curves().axes[0].get_lines() if len(line.get_xdata()) == 1]
    assert line.get_marker() not in ("None", None, "")


def test_the_importance_of_few_trials_comes_with_a_caveat(toy_search: dict[str, Any]) -> None:
    from cifarlab.hpsearch.results import FEW_TRIALS, importance_caveat

    assert "only 3 finished trials" in importance_caveat(3).lower()
    assert "a hint, not a measurement" in importance_caveat(3)
    assert importance_caveat(FEW_TRIALS) == ""
    search = cl.Search(toy_search["out"])
    fig = search.plot_importance()
    assert any("a hint, not a measurement" in t.get_text() for t in fig.texts)
    assert "a hint, not a measurement" in (toy_search["out"] / "search.html").read_text()


def test_the_history_legend_sits_outside_the_axes(toy_search: dict[str, Any]) -> None:
    fig = cl.Search(toy_search["out"]).plot_history()
    assert fig.axes[0].get_legend() is None and fig.legends  # a figure legend, below the axes


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
    ("optimizer: {choice: [adam, rmsprop]}", "unknown optimizer 'rmsprop'"),
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


# ---------------------------------------------------------------------------------------------
# Search folders from someone else (issue 22, items 1, 3 and 14)


def copy_search(toy_search: dict[str, Any], to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(toy_search["out"], to))


@pytest.mark.slow
def test_resume_never_imports_a_model_the_study_names(toy_search: dict[str, Any], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Item 1: the study's stored fixed settings said `model: x.py:Net`, and `--resume` imported
    and ran x.py (and `--model` was refused with `--resume`, so the user could not name it)."""
    from crafted import code_module, tamper_study

    folder = copy_search(toy_search, tmp_path / "s")
    marker = tmp_path / "imported"
    spec = code_module(tmp_path, marker)

    def name_model(settings: dict[str, Any]) -> None:
        settings["fixed"] = {**settings["fixed"], "model": spec}
        settings["trials"] = 5  # one trial more to run

    tamper_study(folder, name_model)
    assert main(["search", "--resume", str(folder), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert f"--model {spec}" in err and not marker.exists()
    assert main(["search", "--resume", str(folder), "--model", "base", "--quiet"]) == 2
    assert "every trial of a search trains the same model" in one_line_error(capsys)
    # named again by the user, it is imported, and the fifth trial trains it
    assert main(["search", "--resume", str(folder), "--model", spec, "--quiet"]) == 0
    assert marker.exists() and len(cl.Search(folder).rows) == 5
    assert f"--model {spec}" in (folder / "best.yaml").read_text().splitlines()[1]


@pytest.mark.parametrize("key, value", [("config_file", "{file}"), ("nproc", 2)])
def test_stored_settings_are_settings(key: str, value: Any, toy_search: dict[str, Any],
                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 1: stored fixed settings that are keywords of cl.train but not settings (config_file
    read another file, which named a model; nproc started processes)."""
    from crafted import code_module, tamper_study

    folder = copy_search(toy_search, tmp_path / "s")
    marker = tmp_path / "imported"
    config = tmp_path / "other.yaml"
    config.write_text(f"model: {code_module(tmp_path, marker)}\n")

    def add(settings: dict[str, Any]) -> None:
        settings["fixed"] = {**settings["fixed"], key: str(config) if value == "{file}" else value}
        settings["trials"] = 5

    tamper_study(folder, add)
    assert main(["search", "--resume", str(folder), "--quiet"]) == 2
    assert f"unknown setting '{key}'" in one_line_error(capsys) and not marker.exists()


@pytest.mark.parametrize("name", ["sqlite-elsewhere", "postgres", "user-db", "db-link"])
def test_a_search_folder_opens_only_its_own_database(name: str, toy_search: dict[str, Any],
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Item 3: a crafted search.json made `--resume` create a SQLite file elsewhere, add Optuna's
    tables to one of the user's, or connect to a server of its choosing."""
    import sqlite3

    from crafted import POINTERS

    folder = copy_search(toy_search, tmp_path / "s")
    elsewhere, mine = tmp_path / "elsewhere.db", tmp_path / "mine.db"
    with sqlite3.connect(mine) as db:
        db.execute("create table notes (text)")
    pointer = dict(POINTERS["postgres" if name == "postgres" else "sqlite-elsewhere"])
    pointer["study"] = json.loads((folder / "search.json").read_text())["study"]
    if name in ("sqlite-elsewhere", "user-db"):
        target = elsewhere if name == "sqlite-elsewhere" else mine
        pointer["storage"] = f"sqlite:///{target}"
        (folder / "search.json").write_text(json.dumps(pointer))
    elif name == "postgres":
        (folder / "search.json").write_text(json.dumps(pointer))
    else:  # the folder's own study.db is a link to the user's database
        (folder / "study.db").unlink()
        (folder / "study.db").symlink_to(mine)
    assert main(["search", "--resume", str(folder), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert ("only when you name it: --storage" in err if name != "db-link"
            else "has no study.db of its own (it is a link)" in err)
    with pytest.raises(cl.UserError):
        cl.Search(folder)
    assert not elsewhere.exists()
    with sqlite3.connect(mine) as db:
        assert db.execute("select count(*) from sqlite_master where type='table'").fetchone() == (1,)
    if name == "sqlite-elsewhere":  # named by the user, it is opened (and has no such study)
        assert main(["search", "--resume", str(folder), "--storage", pointer["storage"],
                     "--quiet"]) == 2
        assert "no study" in one_line_error(capsys)


@pytest.mark.parametrize("name", ["no-study", "spent-text", "spent-nan", "storage-number",
                                  "study-list"])
def test_mistyped_search_json_is_one_line(name: str, toy_search: dict[str, Any], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Item 14: KeyError, ValueError and AttributeError tracebacks before."""
    from crafted import POINTERS

    folder = copy_search(toy_search, tmp_path / "s")
    (folder / "search.json").write_text(json.dumps(POINTERS[name]))
    assert main(["search", "--resume", str(folder), "--quiet"]) == 2
    assert "search.json is damaged" in one_line_error(capsys)


# ----------------------------------------------------------------------------------------------
# Several machines on one study: two worker processes, each with its own folder, on a real
# PostgreSQL server (conftest's postgres_server), run as docs/search.md shows.


def _cifarlab(*argv: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "CIFARLAB_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cifarlab", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _wait_for(what: str, ready: Any, procs: list[subprocess.Popen[str]], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for proc in procs:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"a worker ended before {what}: {err or out}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _in_flight(folder: Path) -> list[Path]:
    """Trial folders of a worker that have trained an epoch and not finished."""
    return [p for p in folder.glob("trial-*") if (p / "metrics.csv").exists()
            and not (p / "summary.json").exists()]


def _finished(folder: Path) -> list[Path]:
    return [p for p in folder.glob("trial-*") if (p / "summary.json").exists()]


@pytest.mark.slow
def test_two_workers_share_a_postgres_study_and_survive_a_kill(
        postgres_url: str, toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Worker A starts the study and finishes a trial; in the middle of its next one it is
    paused (SIGSTOP: the order of events is the test's, not the machine load's), B joins from its
    own folder and trains, and A is killed with SIGKILL. B fails A's lost trial, finishes the
    study, and the study's best reruns from best.yaml."""
    import optuna

    started = time.perf_counter()
    a_dir, b_dir, trials = tmp_path / "a", tmp_path / "b", 4
    common = ["--storage", postgres_url, "--study", "toy-e2"]
    a = _cifarlab("search", "--recipe", "base", "--data", str(toy_data), "--set", "epochs=2", *QUICK,
                  "--trials", str(trials), "--pruner", "none", *common, "--out", str(a_dir))
    b: subprocess.Popen[str] | None = None
    try:
        _wait_for("A finished a trial and is in the next", lambda: bool(
            _finished(a_dir) and _in_flight(a_dir)), [a])
        a.send_signal(signal.SIGSTOP)
        killed = _in_flight(a_dir)
        b = _cifarlab("search", "--resume", str(b_dir), *common)
        _wait_for("B trained", lambda: any((p / "metrics.csv").exists()
                                           for p in b_dir.glob("trial-*")), [b])
        a.send_signal(signal.SIGKILL)
        a.wait()
        _, err = b.communicate(timeout=180)
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert b.returncode == 0, err
    assert "Traceback" not in err

    study = optuna.load_study(study_name="toy-e2", storage=postgres_url)
    states = [t.state.name for t in study.trials]
    runs = [Path(t.user_attrs["run"]) for t in study.trials]
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == trials, states  # the target, despite the lost trial
    assert states.count("FAIL") == 1 and states.count("RUNNING") == 0, states
    [lost] = [t for t in study.trials if t.state.name == "FAIL"]
    assert [runs[lost.number]] == [p.resolve() for p in killed]  # the trial A was in when killed
    # No trial ran twice: one folder per trial number, each in the folder of the worker that ran
    # it, and no two trials with the same settings (B, joining, draws its own).
    assert len(set(runs)) == len(runs) and {r.parent for r in runs} == {a_dir.resolve(), b_dir.resolve()}
    names = [p.name for p in (*a_dir.glob("trial-*"), *b_dir.glob("trial-*"))]
    assert sorted(names) == sorted(r.name for r in runs)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == len(study.trials)
    done = [r.parent.name for r, t in zip(runs, study.trials, strict=True) if t.state.name == "COMPLETE"]
    by = {w: done.count(w) for w in ("a", "b")}
    assert by["a"] >= 1 and by["b"] >= 2  # both worked on the study; B took over the lost trial
    # B's tables are rebuilt from the database: every trial, whichever worker ran it.
    rows = cl.Search(b_dir, storage=postgres_url).rows  # a folder opens another database only when named
    assert [r["trial"] for r in rows] == list(range(len(study.trials)))
    best = cl.Search(b_dir, storage=postgres_url).best
    assert best["val_acc"] == max(t.value for t in study.trials if t.state.name == "COMPLETE")

    # The study's best is rerunnable: the same settings and seed give the same val_acc per epoch.
    assert main(["train", "--config", str(b_dir / "best.yaml"), "--out", str(tmp_path / "again"),
                 "--quiet"]) == 0
    again, trial = cl.load(tmp_path / "again"), cl.load(best["run"])
    assert again.config.to_dict() == trial.config.to_dict()
    assert [r["val_acc"] for r in again.history] == [r["val_acc"] for r in trial.history]
    with capsys.disabled():
        print(f"\npostgres study: {len(study.trials)} trials, {by['a']} completed by A (killed in "
              f"trial {lost.number}), {by['b']} by B; {time.perf_counter() - started:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("case, message", [
    ("no database", 'database "nosuchdb" does not exist'),
    ("no role", 'role "nobody" does not exist'),
    ("server down", "No such file or directory"),
    ("refused", 'connection to server at "127.0.0.1", port 1 failed: Connection refused'),
    ("scheme", "unknown database 'postgres' (PostgreSQL is spelled postgresql://)"),
    ("no driver", "needs the PostgreSQL driver psycopg (3): pip install 'cifarlab[postgres]'"),
])
def test_postgres_storage_errors_are_one_line(case: str, message: str, postgres_server: Any,
                                              toy_data: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    url = {"no database": postgres_server.url("nosuchdb"),
           "no role": postgres_server.url("postgres", user="nobody"),
           "server down": f"postgresql+psycopg://lab@/cl?host={tmp_path}&port=5432",
           "refused": "postgresql+psycopg://lab@127.0.0.1:1/cl",
           "scheme": "postgres://lab@127.0.0.1:1/cl",
           "no driver": postgres_server.url("postgres").replace("+psycopg", "")}[case]
    if case == "no driver":
        monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    out = tmp_path / "s"
    assert main(["search", "--recipe", "base", "--data", str(toy_data), "--storage", url,
                 "--out", str(out), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert message in err and "Traceback" not in err
    assert not (out / "search.json").exists()  # nothing was started
    # Joining a study through such a URL says the same.
    assert main(["search", "--resume", str(tmp_path / "j"), "--storage", url, "--study", "x"]) == 2
    assert message in one_line_error(capsys)


def _take_queued_trial(url: str, start: float, out: Any) -> None:
    from cifarlab.hpsearch.storage import open_storage, optuna_module

    study = optuna_module().load_study(study_name="s", storage=open_storage(url))
    while time.time() < start:  # every process asks at the same moment
        pass
    out.put(study._pop_waiting_trial_id())


@pytest.mark.slow
def test_one_queued_trial_goes_to_one_worker_on_sqlite(tmp_path: Path) -> None:
    """--jobs workers on the search folder's SQLite: the queued baseline trial is taken once.
    (Optuna as is, on SQLite, gave it to 2-4 of 4 processes in 10 of 12 rounds.)"""
    import multiprocessing

    import optuna

    from cifarlab.hpsearch.storage import open_storage

    context = multiprocessing.get_context("fork")  # the children touch optuna and sqlite only
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'study-{round_}.db'}"
        optuna.create_study(study_name="s", storage=open_storage(url)).enqueue_trial({"x": 1})
        queue = context.Queue()
        start = time.time() + 1.0
        workers = [context.Process(target=_take_queued_trial, args=(url, start, queue))
                   for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        taken = [queue.get(timeout=10) for _ in workers]
        assert sum(t is not None for t in taken) == 1, taken
