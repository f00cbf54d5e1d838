"""Where a search lives: its folder, its Optuna study (storage, sampler, pruner), and the
bookkeeping that lets a search be killed and resumed, or shared by several machines.

    searches/base-20261130-101500/
        .cifarlab-search   marker: a search lives here
        search.json        where the study is stored (storage URL, study name), time spent here
        study.db           Optuna's SQLite storage; it also holds the search's settings
        trial-0000/ ...    one run directory per trial (cifarlab train's layout)
        trials.csv trials.json   one row per trial: state, best val_acc, epochs, seconds, settings
        best.yaml          the best finished trial's full config (`cifarlab train --config` reruns it)
        history.png importance.png curves.png search.html    figures, and one page with them all

The study is the record: the search's settings are its user attributes, every trial's settings,
per-epoch val_acc, state and config are in the storage, so the results can be rebuilt from the
database alone (study.py runs trials, results.py reads them back).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarlab import config as configuration
from cifarlab import dburl, fsio, rundir
from cifarlab.dburl import redact
from cifarlab.errors import UserError
from cifarlab.extras import require_extra

if TYPE_CHECKING:  # optuna is an optional extra: imported where a search needs it
    import optuna

MARKER = ".cifarlab-search"
POINTER = "search.json"
STUDY_DB = "study.db"
TRIALS_CSV, TRIALS_JSON, BEST = "trials.csv", "trials.json", "best.yaml"
HISTORY_PNG, IMPORTANCE_PNG, CURVES_PNG, PAGE = "history.png", "importance.png", "curves.png", "search.html"
DEFAULT_ROOT = Path("searches")
HOST = socket.gethostname()


def optuna_module() -> Any:
    require_extra("search", "cifarlab search")
    import optuna

    # A row per trial is ours to print; a failed trial is reported by the error it raised.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


def make_sampler(name: str, seed: int, startup: int) -> optuna.samplers.BaseSampler:
    """TPE (seeded; `constant_liar` keeps parallel workers from sampling the same point) or random."""
    optuna = optuna_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"unknown sampler '{name}' (tpe or random)"
                    f"{configuration.suggest(name, ['tpe', 'random'])}")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """median (default), halving or none; study.py's docstring says why median."""
    optuna = optuna_module()
    if name == "median":
        # Steps are epochs (1, 2, ...): n_warmup_steps=2 judges a trial from its 2nd epoch on.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner '{name}' (median, halving or none)"
                    f"{configuration.suggest(name, ['median', 'halving', 'none'])}")


def open_storage(url: str) -> Any:
    """Optuna's database storage. Heartbeats (every 60 s) let any worker fail a trial whose
    machine died; a dead process on this machine is noticed at once (`fail_dead_trials`).

    Every way it can fail is one line: a URL SQLAlchemy cannot read, a driver that is not
    installed (naming the package, or the extra, that brings it), a server that is down, a
    database or role that does not exist.
    """
    optuna = optuna_module()
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # parallel writers wait
    elif dburl.connect_args(url):
        kwargs["engine_kwargs"] = {"connect_args": dburl.connect_args(url)}
    driver = dburl.missing_driver(url)
    if driver:
        raise UserError(f"--storage {redact(url)} needs {driver}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180,
                                                 **kwargs)
            if url.startswith("sqlite"):
                _one_writer_at_a_time(storage.engine)
            return storage
        except ImportError as exc:  # a driver that imports but cannot load (a broken install)
            raise UserError(f"--storage {redact(url)} needs a database driver: {exc}") from None
        except Exception as exc:  # sqlalchemy's errors: a bad URL, a server that is down
            raise UserError(f"cannot open the storage {redact(url)}: {dburl.explain(exc)}") from None


def _one_writer_at_a_time(engine: Any) -> None:
    """Make SQLite transactions take the write lock when they begin (BEGIN IMMEDIATE).

    Python's sqlite3 begins a transaction only at its first write, and SQLite has no SELECT ...
    FOR UPDATE, so two workers (--jobs) could both read the queued baseline trial as WAITING and
    both take it: one of them then trained it while Optuna failed it under the other ("already
    holds a run", "Cannot tell a FAIL trial"), seen in about one run in four. This is
    SQLAlchemy's own recipe for transactions that mean what they say on pysqlite.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(connection: Any, record: Any) -> None:
        connection.isolation_level = None  # sqlite3 begins nothing itself: the BEGIN below does

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the events (the schema check) are closed


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: leave it to the heartbeat
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Trials left running by a process of this machine that no longer exists (kill -9, reboot):
    marked failed, so the search goes on without them. Other machines' trials are left to the
    heartbeat."""
    optuna = optuna_module()
    dead = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == HOST and not _alive(attrs.get("pid")):
            # The storage API is the one Optuna's own stale-trial handling uses. Another worker
            # may have failed it a moment ago.
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study._storage.set_trial_state_values(trial._trial_id,
                                                      state=optuna.trial.TrialState.FAIL)
                dead.append(trial.number)
    return dead


def write_pointer(path: Path, storage: str, study: str, spent: float,
                  joined: bool | None = None) -> None:
    """search.json. `joined`: this folder joined a study another folder made (kept as it was
    when not given)."""
    default = own_storage(path)
    if joined is None:
        joined = bool((rundir.read_json(path / POINTER) or {}).get("joined"))
    fsio.write_json(path / POINTER, {"storage": None if storage == default else storage,
                                     "study": study, "spent_seconds": round(spent, 1),
                                     **({"joined": True} if joined else {})})


def sampler_salt(path: Path) -> int:
    """0 for the folder that made its study; for one that joined it, a number of its own (from
    the machine and the folder), so that two machines that join when the study has the same
    number of trials do not draw the same settings. The maker's draws stay as they were."""
    if not (rundir.read_json(path / POINTER) or {}).get("joined"):
        return 0
    digest = hashlib.sha256(f"{HOST}:{path.resolve()}".encode()).digest()
    return int.from_bytes(digest[:4], "big") or 1


def own_storage(path: Path) -> str:
    """The URL of the folder's own study.db (where a search started here keeps its study)."""
    return f"sqlite:///{(path / STUDY_DB).resolve()}"


POINTER_FIELDS = {"storage": str | None, "study": str, "spent_seconds": float, "joined": bool}


def read_pointer(path: Path, storage: str | None = None) -> tuple[str, str, float]:
    """(storage URL, study name, seconds spent) of the search in folder `path`.

    A search folder may come from someone else, so its search.json is a claim, not an order: it
    may name the folder's own study.db (a file inside it, not a link), or a database elsewhere
    only when the user names that same URL (`storage`, `--storage`). Otherwise a crafted folder
    could make cifarlab create a SQLite file anywhere, add Optuna's tables to one of the user's,
    or connect to a server of its choosing.
    """
    from cifarlab import plaindata

    if not (path / POINTER).is_file():
        raise UserError(f"{path} is not a cifarlab search: it has no {POINTER}")
    where = str(path / POINTER)
    pointer = plaindata.check_fields(plaindata.read(path / POINTER, "search file"), POINTER_FIELDS,
                                     where)
    if not pointer.get("study"):
        raise UserError(f"{where} is damaged: it names no study")
    spent = pointer.get("spent_seconds", 0.0)
    if not plaindata.finite(spent) or spent < 0:
        raise UserError(f"{where} is damaged: 'spent_seconds' should be a number of seconds, not {spent}")
    url = pointer.get("storage")
    if url is None:
        database = path / STUDY_DB
        if database.is_symlink() or not database.is_file():
            raise UserError(f"{path} has no {STUDY_DB} of its own (" + (
                "it is a link" if database.is_symlink() else "missing or not a file")
                + "); a search folder's study lives in that file, or in the database --storage names")
        url = own_storage(path)
        if storage is not None and storage != url:
            raise UserError(f"{path} keeps its study in its own {STUDY_DB}, not in "
                            f"{redact(storage)}; leave out --storage to continue it")
    elif storage is None:
        raise UserError(f"{where} says the study is in {redact(url)}; cifarlab opens a database "
                        f"outside the search folder only when you name it: --storage {redact(url)}")
    elif storage != url:
        raise UserError(f"{path} belongs to the study in {redact(url)}, not in {redact(storage)}")
    return url, pointer["study"], float(spent)


SETTINGS_FIELDS = {"recipe": str, "space": dict, "fixed": dict, "trials": int | None,
                   "budget": float | None, "sampler": str, "pruner": str, "seed": int, "startup": int}


def settings_of(study: optuna.Study) -> dict[str, Any]:
    """The search's settings as its study stores them, checked like the user input they were.

    The study is in a file anyone can hand over with the folder: its fixed settings must be
    settings (not other keywords of cl.train, such as config_file or nproc), with values that
    check out, and its space must be a space; a model it names is imported only when the user
    names it again (study.py).
    """
    from cifarlab import plaindata
    from cifarlab.hpsearch.space import read_space

    where = f"the settings of study '{study.study_name}'"
    settings = study.user_attrs.get("cifarlab")
    if not isinstance(settings, dict):
        raise UserError(f"study '{study.study_name}' was not made by cifarlab search")
    plaindata.check_fields(settings, SETTINGS_FIELDS, f"study '{study.study_name}'")
    missing = [key for key in ("recipe", "space", "fixed", "sampler", "pruner", "seed", "startup")
               if key not in settings]
    if missing:
        raise UserError(f"{where} are damaged: no {', '.join(missing)}")
    trials, budget = settings.get("trials"), settings.get("budget")
    if (trials is not None and trials < 1) or (budget is not None and not (
            plaindata.finite(budget) and budget > 0)) or settings["startup"] < 0:
        raise UserError(f"{where} are damaged: trials {trials}, budget {budget}, "
                        f"startup {settings['startup']}")
    try:
        for key in settings["fixed"]:
            configuration.field_type(key)  # an unknown key is a did-you-mean error
        base = configuration.resolve(settings["recipe"], None, settings["fixed"])
        read_space(settings["space"], base.recipe, base)
    except UserError as exc:
        raise UserError(f"{where} do not check out: {exc}") from None
    return settings


def open_study(storage: str, name: str, worker: int = 0, salt: int = 0) -> optuna.Study:
    """A cifarlab study, with its sampler and pruner built from the search's settings."""
    optuna = optuna_module()
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        raise UserError(f"no study '{name}' in {redact(storage)}") from None
    settings = settings_of(study)
    # A fresh seed per (seed, trials so far, worker, and the joining folder's salt): a resumed or
    # parallel sampler never replays the draws of the first.
    from cifarlab.runtime import seed_for

    seed = seed_for(int(settings["seed"]), len(study.trials), worker, *([salt] if salt else [])) % 2**32
    study.sampler = make_sampler(settings["sampler"], seed, settings["startup"])
    study.pruner = make_pruner(settings["pruner"])
    return study
