"""MLflow, the experiment tracker: the plumbing under `callbacks.MLflow` and a search's study run.

MLflow (an optional extra: `pip install 'cifarlab[mlflow]'`) keeps runs in a store that many
machines can share (a SQLite file, PostgreSQL ...); `mlflow ui` lists, filters and compares them.
This module opens the store with one-line errors, finds or makes the experiment, turns a config
into MLflow params, and keeps one MLflow run per study for a search's trials to nest under.

    cifarlab train --recipe base --mlflow sqlite:///mlflow.db
    mlflow ui --backend-store-uri sqlite:///mlflow.db      # then http://127.0.0.1:5000

Where: `--mlflow URI`, or `--mlflow` alone for $MLFLOW_TRACKING_URI (else MLflow's default,
./mlflow.db). Which experiment: $MLFLOW_EXPERIMENT_NAME, else "cifarlab".
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
from collections.abc import Iterable, Iterator
from typing import Any

from cifarlab import __version__, dburl
from cifarlab.errors import UserError
from cifarlab.extras import require_extra

EXPERIMENT = "cifarlab"  # the experiment runs go to, unless $MLFLOW_EXPERIMENT_NAME names one
PARAM_CHARS = 6000  # MLflow's limits: a param's value, a tag's value, entries per call
TAG_CHARS = 8000
PER_CALL = 100


def mlflow_client(uri: str | None) -> Any:
    """An MlflowClient on `uri` (None: $MLFLOW_TRACKING_URI, else MLflow's default store),
    checked: a missing extra or driver, or a database that cannot be reached, is one line now."""
    require_extra("mlflow", "--mlflow")
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = uri or mlflow.get_tracking_uri()
    _probe_database(uri)
    try:
        return MlflowClient(uri)
    except Exception as exc:  # a scheme MLflow does not know
        raise store_error(uri, exc) from None


def _probe_database(uri: str) -> None:
    """Connect once, ourselves: MLflow retries a database it cannot reach for about two minutes,
    printing a warning with a traceback each time, before it gives up."""
    scheme = uri.partition(":")[0].partition("+")[0]
    if scheme not in ("postgresql", "mysql", "mssql"):
        return
    driver = dburl.missing_driver(uri)
    if driver:
        raise UserError(f"--mlflow {dburl.redact(uri)} needs {driver}")
    import sqlalchemy

    engine = None
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=dburl.connect_args(uri))
        with engine.connect():
            pass
    except Exception as exc:
        raise UserError(f"cannot reach the MLflow store {dburl.redact(uri)}: "
                        f"{dburl.explain(exc)}") from None
    finally:
        if engine is not None:
            engine.dispose()


@contextlib.contextmanager
def quick_failure() -> Iterator[None]:
    """For the first request to a tracking server: MLflow retries one it cannot reach 7 times
    with a growing wait (four minutes); a wrong --mlflow URI should say so in seconds. Settings
    the user made in the environment stay theirs."""
    chosen = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
    mine = [name for name in chosen if name not in os.environ]
    os.environ.update({name: chosen[name] for name in mine})
    try:
        yield
    finally:
        for name in mine:
            os.environ.pop(name, None)


def store_error(uri: str, exc: BaseException) -> UserError:
    """A failure to reach the store as one line: where, and the first line of why."""
    full = str(exc)
    if "Max retries exceeded" in full or "NewConnectionError" in full:  # a server that is not there
        why = next((w for w in ("Connection refused", "timed out", "Name or service not known",
                                "No route to host") if w in full), "no answer")
        text = f"no tracking server answers there ({why})"
    else:
        text = dburl.explain(exc)
    return UserError(f"cannot log to the MLflow store {dburl.redact(uri)}: {text}")


def experiment_id(client: Any, name: str | None = None) -> str:
    """The id of experiment `name` (default: $MLFLOW_EXPERIMENT_NAME, else "cifarlab"), made if new.
    This is the first call that touches the store: a wrong URI fails here, in one line."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    try:
        with quick_failure():
            found = client.get_experiment_by_name(name)
        if found is None:
            try:
                return str(client.create_experiment(name))
            except Exception:  # another worker made it a moment ago
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            raise UserError(f"the MLflow experiment '{name}' is deleted: restore it (mlflow "
                            "experiments restore) or choose another ($MLFLOW_EXPERIMENT_NAME)")
        return str(found.experiment_id)
    except UserError:
        raise
    except Exception as exc:
        raise store_error(str(client.tracking_uri), exc) from None


def flatten(mapping: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """("augment.flip", True) for {"augment": {"flip": True}}: params are flat in MLflow."""
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:PARAM_CHARS]


def chunks(items: list[Any], size: int = PER_CALL) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def base_tags() -> dict[str, str]:
    """What MLflow's own fluent API sets on a run (user, source), and cifarlab's version and host."""
    return {"mlflow.user": getpass.getuser(), "mlflow.source.type": "LOCAL",
            "mlflow.source.name": "cifarlab", "cifarlab.version": __version__,
            "cifarlab.host": socket.gethostname()}


def study_run(uri: str | bool | None, study: str, search_dir: str, settings: dict[str, Any]) -> str:
    """The MLflow run of a search's study, which its trials nest under: found by its tag (another
    worker, or an earlier session of this search, made it), else made. Returns its run id."""
    client = mlflow_client(uri if isinstance(uri, str) else None)
    experiment = experiment_id(client)
    quoted = study.replace("\\", "\\\\").replace("'", "\\'")
    try:
        found = client.search_runs([experiment], f"tags.`cifarlab.study` = '{quoted}' and "
                                   "tags.`cifarlab.kind` = 'study'", max_results=1,
                                   order_by=["attributes.start_time ASC"])
        if found:
            return str(found[0].info.run_id)
        tags = {**base_tags(), "cifarlab.kind": "study", "cifarlab.study": study,
                "cifarlab.search": search_dir}
        run = client.create_run(experiment, tags=tags, run_name=study)
        from mlflow.entities import Param

        params = [Param(k, param_value(v)) for k, v in flatten(
            {k: settings[k] for k in ("recipe", "space", "fixed", "trials", "budget", "sampler",
                                      "pruner", "seed") if k in settings})]
        for part in chunks(params):
            client.log_batch(run.info.run_id, params=part)
        return str(run.info.run_id)
    except Exception as exc:
        raise store_error(str(client.tracking_uri), exc) from None


def finish_study_run(uri: str | bool | None, run_id: str, files: Iterable[Any],
                     best: dict[str, Any] | None) -> None:
    """A search that reached its end: its tables, figures and page as the study run's artifacts,
    the best val_acc and trial as metrics, and the run FINISHED. (A search stopped early leaves
    it RUNNING; resuming it comes back to the same run.)"""
    client = mlflow_client(uri if isinstance(uri, str) else None)
    try:
        for path in files:
            client.log_artifact(run_id, str(path))
        if best:
            from mlflow.entities import Metric

            now = _now_ms()
            client.log_batch(run_id, metrics=[Metric("best_val_acc", float(best["val_acc"]), now, 0),
                                              Metric("best_trial", float(best["trial"]), now, 0)])
        client.set_terminated(run_id, "FINISHED")
    except Exception as exc:
        from cifarlab.errors import warn

        warn(f"MLflow: could not log the search's results: {store_error(str(client.tracking_uri), exc)}")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
