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

import os
import socket
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarlab import config as configuration
from cifarlab import fsio, rundir
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
    machine died; a dead process on this machine is noticed at once (`fail_dead_trials`)."""
    optuna = optuna_module()
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # parallel writers wait
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180, **kwargs)
        except ImportError as exc:
            raise UserError(f"--storage {redact(url)} needs a database driver: {exc}") from None
        except Exception as exc:  # sqlalchemy's errors: a bad URL, a server that is down
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"cannot open the storage {redact(url)}: {first}") from None


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, user = head.partition("://")
    return f"{scheme}://{user.partition(':')[0]}:***@{tail}"


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
            # The storage API is the one Optuna's own stale-trial handling uses.
            study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
            dead.append(trial.number)
    return dead


def write_pointer(path: Path, storage: str, study: str, spent: float) -> None:
    default = f"sqlite:///{(path / STUDY_DB).resolve()}"
    fsio.write_json(path / POINTER, {"storage": None if storage == default else storage,
                                     "study": study, "spent_seconds": round(spent, 1)})


def read_pointer(path: Path) -> tuple[str, str, float]:
    pointer = rundir.read_json(path / POINTER)
    if pointer is None:
        raise UserError(f"{path} is not a cifarlab search: it has no {POINTER}")
    storage = pointer.get("storage") or f"sqlite:///{(path / STUDY_DB).resolve()}"
    return storage, str(pointer["study"]), float(pointer.get("spent_seconds", 0.0))


def open_study(storage: str, name: str, worker: int = 0) -> optuna.Study:
    """A cifarlab study, with its sampler and pruner built from the search's settings."""
    optuna = optuna_module()
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        raise UserError(f"no study '{name}' in {redact(storage)}") from None
    settings = study.user_attrs.get("cifarlab")
    if not isinstance(settings, dict):
        raise UserError(f"study '{name}' was not made by cifarlab search")
    # A fresh seed per (seed, trials so far, worker): a resumed or parallel sampler never
    # replays the draws of the first.
    from cifarlab.runtime import seed_for

    seed = seed_for(int(settings["seed"]), len(study.trials), worker) % 2**32
    study.sampler = make_sampler(settings["sampler"], seed, settings["startup"])
    study.pruner = make_pruner(settings["pruner"])
    return study
