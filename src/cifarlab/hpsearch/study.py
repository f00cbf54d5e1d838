"""Hyperparameter search on Optuna: every trial a normal run, bad ones stopped from their epochs.

    cifarlab search --recipe base --space space.yaml --trials 30 --data ../shared/data/cifar10-train-jpeg.tgz
    cifarlab search --recipe base --budget 2h --set subset=10000 --set epochs=8
    cifarlab search --resume searches/base-20261130-101500      # after Ctrl-C, kill -9 or a reboot
    cifarlab train --config searches/base-20261130-101500/best.yaml   # the winner, again

    >>> import cifarlab as cl
    >>> s = cl.search("base", space={"lr": {"log_uniform": [1e-4, 1e-2]}}, trials=20, epochs=8,
    ...               data="../shared/data/cifar10-train-jpeg.tgz", subset=10000)   # doctest: +SKIP
    >>> s.best["val_acc"], s.best_config.lr                                         # doctest: +SKIP

What it does, and why:

- **Each trial is a run** (`DIR/trial-0007/`, trained by `cl.train`), so every tool that reads runs
  (report, compare, evaluate, resume) works on a trial. All trials train with the same seed, so
  they differ by their settings only.
- **The objective is the trial's best val_acc**, on the run's validation split; the test split is
  never loaded. Every trial validates on the same images (`val_fraction` and `split_seed` may not
  be searched).
- **TPE (Optuna's default sampler), seeded.** It models good and bad regions from the finished
  trials and needs no more than a few random trials to start (a third of a short search, at most
  Optuna's 10). `random` is the honest baseline for comparing samplers. Trial 0 is the recipe's
  own values whenever they lie in the space, so a search always shows what it gained over them.
- **The median pruner by default**: after its second epoch, a trial whose best val_acc so far is
  below the median of the finished trials at the same epoch stops. It waits for 3 finished trials
  and never judges epoch 1 (too noisy). Successive halving (`halving`, rungs at epochs 2, 6, 18,
  keeping the best third) saves more, but it decides on rank alone, so in the small searches a
  2-core CPU affords it kills slow starters (a low lr, strong augmentation, a onecycle warm-up)
  that finish first; the median pruner only stops trials that are worse than a typical one. A
  trial that diverges (non-finite loss) counts as pruned: the sampler learns to avoid it.
- **Storage is a database** (SQLite in the search folder by default; any URL Optuna takes, e.g.
  PostgreSQL), written after every epoch. A search killed at any point resumes with `--resume`
  and loses at most the trial in flight (marked failed; its folder stays). Several machines can
  work on one study: see docs/search.md.

The folder layout and the study's bookkeeping are in storage.py; the space format in
space.py; reading results back (tables, figures, the page) in results.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarlab import config as configuration
from cifarlab import fsio, rundir
from cifarlab.callbacks import Callback
from cifarlab.config import resolve
from cifarlab.errors import Interrupted, TrainingError, UserError
from cifarlab.history import measured
from cifarlab.hpsearch.results import Search, trial_seconds
from cifarlab.hpsearch.space import NOT_SEARCHABLE, Param, current, read_space
from cifarlab.hpsearch.storage import (
    BEST,
    CURVES_PNG,
    DEFAULT_ROOT,
    HISTORY_PNG,
    HOST,
    IMPORTANCE_PNG,
    MARKER,
    PAGE,
    POINTER,
    STUDY_DB,
    TRIALS_CSV,
    fail_dead_trials,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    optuna_module,
    read_pointer,
    redact,
    sampler_salt,
    settings_of,
    write_pointer,
)

if TYPE_CHECKING:
    import optuna

DEFAULT_TRIALS = 20  # when neither --trials nor --budget is given
PathLike = str | os.PathLike[str]


class SearchInterrupted(Interrupted):
    """Ctrl-C during a search: the trial in flight is marked failed; `--resume` goes on."""

    def __init__(self, path: Path):
        Exception.__init__(self, f"search interrupted; continue it with: cifarlab search --resume {path}")
        self.run_dir = path


# ----------------------------------------------------------------------------------------------
# Running trials


class _Report(Callback):
    """The pruning callback: each epoch's val_acc goes to Optuna, which may say stop."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.pruned_at: int | None = None

    def on_train_begin(self, trainer: Any) -> None:
        self.trial.set_user_attr("config", trainer.config.to_dict())  # kept even if the trial dies

    def on_epoch_end(self, trainer: Any, metrics: dict[str, Any]) -> bool:
        epoch = int(metrics["epoch"])
        if not math.isfinite(metrics["val_acc"]):  # an epoch eval_every does not evaluate
            return False
        self.trial.report(float(metrics["val_acc"]), step=epoch)
        if epoch < trainer.config.epochs and self.trial.should_prune():
            self.pruned_at = epoch
            return True
        return False


@dataclasses.dataclass
class _Work:
    """What every worker needs to run trials of one study (picklable: workers are processes)."""

    path: Path
    storage: str
    study: str
    data: str | None
    quiet: bool
    target: int | None  # finished trials (complete + pruned) in the whole study
    deadline: float | None  # time.time() after which no trial starts
    worker: int = 0
    threads: int | None = None
    model: Any = None  # a Python model object (one process only)
    callbacks: Sequence[Any] = ()
    clock: Any = None  # (spent before, started): the main process's time accounting
    mlflow: str | bool | None = None  # log every trial to MLflow (a URI; True: $MLFLOW_TRACKING_URI)
    mlflow_parent: str | None = None  # ... as a nested run of the study's MLflow run
    salt: int = 0  # a folder that joined another's study draws its own settings (sampler_salt)


def _work(work: _Work) -> None:
    """Run trials until the study has its trials, the deadline passes, or Ctrl-C."""
    if work.threads:
        os.environ["CIFARLAB_THREADS"] = str(work.threads)
    study = open_study(work.storage, work.study, work.worker, work.salt)
    settings = settings_of(study)
    params = [Param(key, kind, tuple(values)) for key, spec in settings["space"].items()
              for kind, values in spec.items()]
    fail_dead_trials(study)
    objective = _Objective(work, settings, params)
    while not _done(study, work):
        study.optimize(objective, n_trials=1, callbacks=[objective.after])


WAIT_SECONDS = 2.0  # how often a worker with nothing to start looks at the trials in flight


def _done(study: optuna.Study, work: _Work) -> bool:
    """True when the study has its trials or the deadline leaves no room for another.

    A worker that finds every remaining trial already running (on other workers, here or on other
    machines) waits for them instead of leaving: if one of those workers dies (kill -9, a lost
    machine), its trial is failed (at once on this machine, after 3 minutes without a heartbeat
    from another) and this worker runs a trial in its place, so the study reaches its target
    while any worker lives.
    """
    optuna = optuna_module()
    state = optuna.trial.TrialState
    said = False
    while True:
        fail_dead_trials(study)
        with warnings.catch_warnings():  # experimental since Optuna 2.9, and unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in (state.COMPLETE, state.PRUNED)]
        running = [t for t in trials if t.state == state.RUNNING]
        if work.target is not None and len(finished) >= work.target:
            return True
        if work.deadline is not None:
            complete = [trial_seconds(t) for t in trials if t.state == state.COMPLETE]
            expected = statistics.median(complete) if complete else 0.0
            if time.time() + expected > work.deadline:
                return True
        if work.target is None or len(finished) + len(running) < work.target:
            return False
        if not said and not work.quiet:
            print(f"the study's last {len(running)} trial(s) are running on other workers: "
                  "waiting for them (if a worker dies, this one takes its trial over)", flush=True)
            said = True
        time.sleep(WAIT_SECONDS)


class _Objective:
    def __init__(self, work: _Work, settings: dict[str, Any], params: list[Param]):
        self.work, self.settings, self.params = work, settings, params

    def __call__(self, trial: optuna.Trial) -> float:
        optuna = optuna_module()
        from cifarlab import api

        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())
        values = {p.key: p.suggest(trial) for p in self.params}
        run_dir = self.work.path / f"trial-{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir.resolve()))
        report = _Report(trial)
        fixed = dict(self.settings["fixed"])
        model = trial_model(fixed.pop("model", None), self.work.model, self.work.path)
        if self.work.data is not None:
            fixed["data"] = self.work.data
        tracker = self._tracker(trial)
        callbacks = [report, *([tracker] if tracker is not None else []), *self.work.callbacks]
        try:
            api.train(self.settings["recipe"], out=run_dir, model=model, callbacks=callbacks,
                      quiet=True, **{**fixed, **values})
        except TrainingError as exc:  # diverged: as bad as a trial gets, which the sampler should know
            self._note(trial, run_dir)
            trial.set_user_attr("note", f"diverged: {str(exc).split(';')[0]}")
            _close(tracker, "FAILED", "diverged")
            raise optuna.TrialPruned("diverged") from None
        except Interrupted:
            _close(tracker, "KILLED", "fail")
            raise KeyboardInterrupt from None  # the trial fails; the search stops
        except BaseException:
            _close(tracker, "FAILED", "fail")
            raise
        history = self._note(trial, run_dir)
        best = max(row["val_acc"] for row in measured(history))
        if report.pruned_at is not None:
            trial.set_user_attr("note", f"pruned after epoch {report.pruned_at}")
            _close(tracker, "FINISHED", "pruned")
            raise optuna.TrialPruned(f"pruned after epoch {report.pruned_at}")
        _close(tracker, "FINISHED", "complete")
        return best

    def _tracker(self, trial: optuna.Trial) -> Any:
        """With --mlflow: the trial's MLflow run, nested under the study's (no report: five
        figures a trial would cost seconds each; `cifarlab report DIR/trial-N` draws them)."""
        if not self.work.mlflow:
            return None
        from cifarlab.callbacks import MLflow

        uri = self.work.mlflow if isinstance(self.work.mlflow, str) else None
        tracker = MLflow(uri, parent_run_id=self.work.mlflow_parent, report=False,
                         tags={"cifarlab.kind": "trial", "cifarlab.study": self.work.study,
                               "cifarlab.trial": str(trial.number)})
        return tracker

    def _note(self, trial: optuna.Trial, run_dir: Path) -> list[dict[str, float]]:
        info = rundir.read_json(run_dir / rundir.CONFIG) or {}
        trial.set_user_attr("config", info.get("config"))
        history = rundir.read_history(run_dir / rundir.METRICS) if (run_dir / rundir.METRICS).exists() else []
        trial.set_user_attr("epochs", len(history))
        return history

    def after(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial: the ledger files, the time spent, and one printed row."""
        if self.work.clock is not None:
            spent, started = self.work.clock
            write_pointer(self.work.path, self.work.storage, self.work.study,
                          spent + time.perf_counter() - started)
        result = Search(self.work.path, study=study)
        result.write_tables()
        if not self.work.quiet:
            print(result.row_line(trial), flush=True)


def _close(tracker: Any, status: str, state: str) -> None:
    """End a trial's MLflow run with its status, tagged with the trial's state in the study."""
    if tracker is not None:
        tracker.close(status)
        tracker.set_tag("cifarlab.trial_state", state)


# ----------------------------------------------------------------------------------------------
# Starting, resuming and joining a search


def search(recipe: str | None = None, *, space: dict[str, Any] | PathLike | None = None,
           trials: int | None = None, budget: float | str | None = None,
           data: PathLike | None = None, out: PathLike | None = None, resume: bool = False,
           storage: str | None = None, study: str | None = None, sampler: str = "tpe",
           pruner: str = "median", sampler_seed: int = 0, jobs: int = 1, model: Any = None,
           config_file: PathLike | None = None, callbacks: Sequence[Any] = (),
           baseline: bool = True, quiet: bool = False, mlflow: str | bool | None = None,
           **settings: Any) -> Search:
    """Search hyperparameters of a recipe with Optuna; returns the Search (`cl.search`).

    `space`: a mapping or a YAML/JSON file (see `read_space`), else the recipe's default.
    `trials`: finished trials the study should have; `budget`: seconds or "2h", the wall clock
    this folder may spend (both: whichever comes first; neither: 20 trials). Any other keyword is
    a fixed setting of every trial (`epochs=8, subset=10000`; `seed` is the trials' training
    seed, `sampler_seed` the sampler's). `resume=True` continues the search
    in `out` (default: the newest in searches/), or, with `storage` and `study`, joins a study
    that another machine started. `jobs=N` runs N trials at a time in processes of cores/N
    threads (on the 2 shared cores here, jobs=2 ran 4 trials 2.8x faster than one process of 2
    threads: docs/search.md; 1 stays the default because it alone replays a search exactly).
    `callbacks` go to every trial's training. `mlflow`: a tracking URI (True: $MLFLOW_TRACKING_URI)
    to log the study as an MLflow run and every trial as a run nested under it (callbacks.MLflow).
    """
    optuna = optuna_module()
    if jobs < 1:
        raise UserError("--jobs must be at least 1")
    if jobs > 1 and model is not None and not isinstance(model, str):
        raise UserError("--jobs > 1 starts processes, which cannot receive a Python object: "
                        "register the model in a file and pass model='file.py:Class'")
    if trials is not None and trials < 1:
        raise UserError("--trials must be at least 1")
    seconds = _budget(budget)
    if mlflow:  # a missing extra or a wrong URI fails now, before a folder or a study exists
        from cifarlab import tracking

        tracking.experiment_id(tracking.mlflow_client(mlflow if isinstance(mlflow, str) else None))
    if resume:
        if recipe or space is not None or settings or config_file is not None:
            raise UserError("--resume continues a search as it was set up: leave out --recipe, "
                            "--space, --config and --set (only --trials, --budget, --data, --jobs "
                            "and --model, for a search of your own model, may change)")
        path, storage_url, study_name, spent = _resume_dir(out, storage, study)
        saved = settings_of(open_study(storage_url, study_name))
        trial_model(saved["fixed"].get("model"), model, path)  # before any trial starts
        trials = trials if trials is not None else saved.get("trials")
        seconds = seconds if seconds is not None else saved.get("budget")
    else:
        path, storage_url, study_name = _create(recipe, space, trials, seconds, data, out, storage,
                                                study, sampler, pruner, sampler_seed, model,
                                                config_file, baseline, quiet, settings)
        spent = 0.0
    if trials is None and seconds is None:
        trials = DEFAULT_TRIALS
    started = time.perf_counter()
    deadline = time.time() + seconds - spent if seconds is not None else None
    work = _Work(path, storage_url, study_name, str(data) if data is not None else None, quiet,
                 trials, deadline, model=model, callbacks=callbacks, clock=(spent, started),
                 mlflow=mlflow, salt=sampler_salt(path))
    if mlflow:
        from cifarlab import tracking

        record = settings_of(open_study(storage_url, study_name))
        work.mlflow_parent = tracking.study_run(mlflow, study_name, str(path.resolve()), record)
    result = Search(path, storage=storage_url)
    if not quiet:
        print(result.header(trials, seconds, spent, jobs), flush=True)
    try:
        if jobs == 1:
            _work(work)
        else:
            _work_in_processes(work, jobs)
    except KeyboardInterrupt:
        raise SearchInterrupted(path) from None
    finally:
        write_pointer(path, storage_url, study_name, spent + time.perf_counter() - started)
        with contextlib.suppress(UserError, optuna.exceptions.OptunaError):
            Search(path, storage=storage_url).write()
    result = Search(path, storage=storage_url)
    if work.mlflow_parent is not None:  # reached only when this worker's search is done
        from cifarlab import tracking

        tracking.finish_study_run(mlflow, work.mlflow_parent, _study_files(path), result.best)
    return result


def _study_files(path: Path) -> list[Path]:
    """What the study's MLflow run keeps: the tables, figures, best config and page."""
    names = (PAGE, TRIALS_CSV, BEST, HISTORY_PNG, CURVES_PNG, IMPORTANCE_PNG)
    return [path / name for name in names if (path / name).is_file()]


def trial_model(stored: Any, model: Any, path: Path) -> Any:
    """What the trials train: the user's `model`, else the model the study names if it is a
    registered name. A study names a model of the user's by its import spec ("x.py:Net"), which
    is code, and a search folder may come from anyone: resuming such a search imports the model
    only when the user names it again (--model), as `train --resume` asks."""
    from cifarlab.networks import spec_of

    if stored is not None and not isinstance(stored, str):
        raise UserError(f"the study in {path} names the model {stored!r}, which is not a model name")
    if model is None:
        if stored is not None and ":" in stored:
            raise UserError(f"the search in {path} trains the model '{stored}', and a search folder "
                            "never makes cifarlab import code: name it yourself to go on: "
                            f"--model {stored}")
        return stored
    named = model if isinstance(model, str) else spec_of(model)
    if named != stored:
        trains = f"the model '{stored}'" if stored is not None else "its recipe's model"
        raise UserError(f"the search in {path} trains {trains}, not '{named}': every trial of a "
                        "search trains the same model")
    return model


def _budget(budget: float | str | None) -> float | None:
    if budget is None:
        return None
    if isinstance(budget, str):
        return configuration.parse_duration(budget)
    if budget <= 0:
        raise UserError("--budget must be positive")
    return float(budget)


def _create(recipe: str | None, space: Any, trials: int | None, seconds: float | None,
            data: PathLike | None, out: PathLike | None, storage: str | None, study: str | None,
            sampler: str, pruner: str, seed: int, model: Any, config_file: PathLike | None,
            baseline: bool, quiet: bool, settings: dict[str, Any]) -> tuple[Path, str, str]:
    """Check everything, then make the folder and the study; returns (folder, storage, study)."""
    optuna = optuna_module()
    from cifarlab.networks import spec_of

    from_file = configuration.read_file(os.fspath(config_file)) if config_file is not None else {}
    fixed = {**from_file,
             **{k: (str(v) if k == "data" and v is not None else v) for k, v in settings.items()}}
    if model is not None:
        fixed["model"] = model if isinstance(model, str) else spec_of(model)
    configuration.check_named_model(from_file, {"model": model}, config_file)
    if data is not None:  # absolute: a resume may start from another folder
        fixed["data"] = str(Path(data).resolve()) if Path(data).exists() else str(data)
    name = recipe or fixed.pop("recipe", None) or "base"
    fixed.pop("recipe", None)
    for key in ("budget", "max_epochs"):
        if fixed.get(key) is not None:
            raise UserError(f"'{key}' cannot be fixed in a search: {NOT_SEARCHABLE[key]}")
    base = resolve(name, None, fixed)
    params = read_space(space, name, base)
    both = sorted({p.key for p in params} & set(fixed))
    if both:
        raise UserError(f"{', '.join(both)}: both fixed (--set/--config) and searched (the space); "
                        "drop one")
    make_sampler(sampler, seed, 1)  # unknown names fail here, before any folder exists
    make_pruner(pruner)
    from cifarlab.data import load_dataset

    # a bad --data fails now; and the cache is warm for trials
    load_dataset(base.data, quiet=quiet, label_mode=base.label_mode)
    path = _make_dir(out, name)
    try:
        study_name = study or path.resolve().name
        url = storage or f"sqlite:///{(path / STUDY_DB).resolve()}"
        startup = min(10, max(4, (trials or 30) // 3))
        setup = {"recipe": name, "space": {p.key: p.to_spec() for p in params}, "fixed": fixed,
                  "trials": trials, "budget": seconds, "sampler": sampler, "pruner": pruner,
                  "seed": seed, "startup": startup, "created": datetime.now().isoformat("T", "seconds"),
                  "host": HOST, "command": " ".join(sys.argv)}
        try:
            created = optuna.create_study(study_name=study_name, storage=open_storage(url),
                                          direction="maximize")
        except optuna.exceptions.DuplicatedStudyError:
            raise UserError(f"the storage already has a study '{study_name}'; join or continue it "
                            f"with: cifarlab search --resume DIR --storage URL --study {study_name}"
                            ) from None
        created.set_user_attr("cifarlab", setup)
        defaults = {p.key: current(base, p.key) for p in params}
        if baseline and all(p.contains(defaults[p.key]) for p in params):
            created.enqueue_trial(defaults, user_attrs={"baseline": True})
        write_pointer(path, url, study_name, 0.0)
    except BaseException:
        _discard(path, out)
        raise
    return path, url, study_name


def _make_dir(out: PathLike | None, recipe: str) -> Path:
    """A new search folder: OUT (new or empty), else searches/<recipe>-<time>[-N]."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} is a file, not a folder")
        if (path / MARKER).exists():
            raise UserError(f"{path} already holds a search; continue it with --resume {path}")
        if path.is_dir() and any(path.iterdir()):
            raise UserError(f"--out {path} is a folder with other files in it; a search starts "
                            "in a new or empty folder")
        fsio.make_dir(path)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        fsio.make_dir(DEFAULT_ROOT)
        for attempt in range(1, 1000):
            path = DEFAULT_ROOT / (f"{recipe}-{stamp}" if attempt == 1 else f"{recipe}-{stamp}-{attempt}")
            with contextlib.suppress(FileExistsError):
                path.mkdir()
                break
        else:
            raise UserError(f"cannot find a free folder name in {DEFAULT_ROOT}")
    try:
        fd = os.open(path / MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        raise UserError(f"{path} was just claimed by another search; choose another --out") from None
    os.close(fd)
    return path


def _discard(path: Path, out: PathLike | None) -> None:
    """A search that failed to start leaves nothing behind (but a folder the user named)."""
    for name in (MARKER, POINTER, STUDY_DB):
        with contextlib.suppress(OSError):
            (path / name).unlink()
    if out is None:
        with contextlib.suppress(OSError):
            path.rmdir()


def _resume_dir(out: PathLike | None, storage: str | None,
                study: str | None) -> tuple[Path, str, str, float]:
    """(folder, storage, study, seconds spent) of a search to continue, or of a new folder that
    joins a study on a shared storage (`storage` and `study` given, `out` new)."""
    if out is None:
        searches = sorted(DEFAULT_ROOT.glob(f"*/{POINTER}"), key=lambda p: p.stat().st_mtime)
        if not searches:
            raise UserError(f"no search to resume in {DEFAULT_ROOT}/; pass its folder: --resume DIR")
        out = searches[-1].parent
    path = Path(out)
    if (path / POINTER).exists():
        url, name, spent = read_pointer(path, storage)
        if study and study != name:
            raise UserError(f"{path} belongs to study '{name}' in {redact(url)}; leave out "
                            "--study to continue it")
        return path, url, name, spent
    if storage is None or study is None:
        raise UserError(f"{path} is not a cifarlab search (no {POINTER}); to join a study that "
                        "another machine started, give --storage URL and --study NAME")
    open_study(storage, study)  # it exists, and is ours
    path = _make_dir(path, "join")
    write_pointer(path, storage, study, 0.0, joined=True)
    return path, storage, study, 0.0


def _work_in_processes(work: _Work, jobs: int) -> None:
    """N workers, each a process with cores // N threads, sharing the study through its storage."""
    from cifarlab.runtime import available_cores

    threads = max(1, available_cores() // jobs)
    context = multiprocessing.get_context("spawn")  # fork after torch has threads is unsafe
    workers = [context.Process(target=_worker_main, args=(dataclasses.replace(
        work, worker=i + 1, threads=threads, clock=None, callbacks=()),), daemon=False)
        for i in range(jobs)]
    for worker in workers:
        worker.start()
    spent, started = work.clock
    try:
        while any(w.is_alive() for w in workers):
            for worker in workers:
                worker.join(timeout=5)
            write_pointer(work.path, work.storage, work.study, spent + time.perf_counter() - started)
    except KeyboardInterrupt:  # the workers got Ctrl-C too: let them save and stop
        for worker in workers:
            worker.join()
        raise
    failed = [w.exitcode for w in workers if w.exitcode != 0]
    if failed:
        if all(code == 130 for code in failed):
            raise KeyboardInterrupt
        raise TrainingError(f"{len(failed)} of {jobs} search workers failed (exit codes "
                            f"{failed}; their messages are above); continue with --resume {work.path}")


def _worker_main(work: _Work) -> None:
    try:
        _work(work)
    except UserError as exc:
        print(f"cifarlab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
