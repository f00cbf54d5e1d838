"""Callbacks: code of yours that runs while a model trains, and the TensorBoard and MLflow
loggers.

Subclass `Callback` and override the hooks you need, or pass a plain function
`f(trainer, metrics)`, which runs at the end of every epoch. Every hook gets the `Trainer`
(trainer.py): `trainer.path`, `.config`, `.history`, `.model`, `.classes`, `.epoch`, and two
ways to end training early: `trainer.stop()` ends it after this epoch (best.pt and model.pt are
written as usual), `trainer.interrupt()` after this step, with a resumable checkpoint, as Ctrl-C
does. An `on_epoch_end` that returns True stops too (Keras' `model.stop_training = True`).

    >>> import cifarlab as cl
    >>> class StopAt70(cl.Callback):
    ...     def on_epoch_end(self, trainer, metrics):
    ...         if metrics["val_acc"] >= 0.70:
    ...             trainer.stop()
    >>> run = cl.train("base", epochs=30, callbacks=[StopAt70()])    # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cifarlab import rundir
from cifarlab.errors import UserError
from cifarlab.extras import require_extra

Trainer = Any  # trainer.Trainer, which imports this module (named here, not imported: no circle)


class Callback:
    """Hooks the training loop calls; each does nothing unless you override it."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first step (of a new run, or of a resumed one)."""

    def on_step_end(self, trainer: Trainer, step: dict[str, float]) -> None:
        """After every optimizer step: `step` holds epoch, step, and the running loss and acc of
        the epoch so far (keep it cheap: it runs hundreds of times an epoch)."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> bool | None:
        """After every epoch, with its row of metrics.csv; return True to stop after it."""
        return None

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """After the last epoch, with summary.json's figures."""


class EpochFunction(Callback):
    """A plain function f(trainer, metrics), called at the end of every epoch."""

    def __init__(self, function: Callable[..., Any]):
        self.function = function

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> bool | None:
        return self.function(trainer, metrics) is True


def as_callbacks(items: Iterable[Any]) -> list[Callback]:
    """Callbacks as the loop calls them: Callback objects as they are, functions wrapped."""
    out: list[Callback] = []
    for item in items:
        if isinstance(item, Callback):
            out.append(item)
        elif callable(item):
            out.append(EpochFunction(item))
        else:
            raise UserError(f"a callback must subclass cifarlab.Callback or be a function "
                            f"f(trainer, metrics); got {type(item).__name__}")
    return out


class LiveCurves(Callback):
    """Loss and accuracy, train against val, redrawn in place after every epoch in a notebook
    (livelossplot's, or fastai's ShowGraphCallback's, job). cl.train adds it by itself in
    Jupyter unless `quiet=True` or `live_plot=False`."""

    def __init__(self) -> None:
        self.handle: Any = None

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        from IPython.display import display

        from cifarlab import plots

        history = trainer.history
        title = (f"{trainer.config.name or trainer.path.name}: epoch {metrics['epoch']} of "
                 f"{trainer.config.epochs}")
        best = min((r for r in history if r["val_loss"] == r["val_loss"]),  # NaN: not measured
                   key=lambda r: r["val_loss"], default=None)
        figure = plots.curves(history, title, int(best["epoch"]) if best else 0)
        if self.handle is None:
            self.handle = display(figure, display_id=True)
        else:
            self.handle.update(figure)

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        self.handle = None


class TensorBoard(Callback):
    """Scalars per epoch (losses, accuracies, lr, seconds) and, at the end, the confusion matrix
    of the validation split, into RUN/tensorboard (`tensorboard --logdir runs`)."""

    def __init__(self, log_dir: str | None = None):
        require_extra("tensorboard", "--tensorboard")
        self.log_dir = log_dir
        self.writer: Any = None

    def on_train_begin(self, run: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if run.ctx.is_main:
            folder = self.log_dir or str(rundir.output_folder(run.path, rundir.TENSORBOARD))
            self.writer = SummaryWriter(folder)

    def on_epoch_end(self, run: Any, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return None
        step = int(metrics["epoch"])
        for group, keys in (("loss", ("train_loss", "val_loss")),
                            ("accuracy", ("train_acc", "train_acc_clean", "val_acc"))):
            values = {k: metrics[k] for k in keys if math.isfinite(metrics[k])}  # eval_every
            if values:
                self.writer.add_scalars(group, values, step)
        self.writer.add_scalar("lr", metrics["lr"], step)
        self.writer.add_scalar("seconds", metrics["seconds"], step)
        self.writer.flush()

    def on_train_end(self, run: Any, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        if not len(run.data.val):  # --val-fraction 0: no confusion matrix to draw
            self.writer.close()
            self.writer = None
            return
        from cifarlab import plots
        from cifarlab.evaluate import confusion_counts, predict_logits

        logits = predict_logits(run.model, run.data.val.images, run.device)
        counts = confusion_counts(run.data.val.labels, logits.argmax(1).numpy(),
                                         len(run.classes))
        figure = plots.confusion(counts, run.classes, f"Confusion matrix: {run.path.name}, val")
        self.writer.add_figure("confusion_matrix", figure, len(run.history))
        self.writer.close()
        self.writer = None


class MLflow(Callback):
    """Log the run to MLflow: its settings (params), every epoch's metrics, the diagnosis, the
    final figures (summary.json's numbers) and its files and report (artifacts), tagged with the
    run's name and folder, so that `mlflow ui` lists, filters and compares runs (README).

        >>> import cifarlab as cl
        >>> tracker = cl.callbacks.MLflow("sqlite:///mlflow.db")          # doctest: +SKIP
        >>> run = cl.train("base", epochs=2, callbacks=[tracker])         # doctest: +SKIP
        >>> tracker.run_id                                                # doctest: +SKIP

    `tracking_uri`: the store (None: $MLFLOW_TRACKING_URI, else MLflow's default, ./mlflow.db);
    `experiment`: None for $MLFLOW_EXPERIMENT_NAME, else "cifarlab"; `parent_run_id`: log as a
    nested run of that one (a search's trials nest under their study's run); `tags`: more tags;
    `report`: also write RUN/report/ and log it (a pass over the validation split and five
    figures: seconds on a CPU). Under torchrun rank 0 alone logs. A resumed run goes on in the
    same MLflow run (RUN/mlflow.json keeps its id). A store that fails during training costs a
    warning, never the training.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, *,
                 parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                 report: bool = True):
        from cifarlab import distributed, tracking

        self.client: Any = None
        self.run_id: str | None = None
        self.open = False
        self.parent_run_id, self.tags, self.report = parent_run_id, dict(tags or {}), report
        if not distributed.from_env().is_main:
            return
        self.client = tracking.mlflow_client(tracking_uri)  # fails here, in one line, if absent
        self.experiment_id = tracking.experiment_id(self.client, experiment)  # or unreachable

    # -- the hooks ---------------------------------------------------------------------------

    def on_train_begin(self, run: Any) -> None:
        if self.client is None or not run.ctx.is_main:
            self.client = None
            return
        self._guard(self._begin, run)

    def on_epoch_end(self, run: Any, metrics: dict[str, Any]) -> None:
        if self.run_id is not None:
            step = int(metrics["epoch"])
            self._guard(self._metrics, {k: v for k, v in metrics.items() if k != "epoch"}, step)

    def on_train_end(self, run: Any, summary: dict[str, Any]) -> None:
        if self.run_id is not None:
            self._guard(self._end, run, summary)

    # -- what they log -----------------------------------------------------------------------

    def _begin(self, run: Any) -> None:
        from mlflow.entities import Param

        from cifarlab import dburl, fsio, tracking

        name = getattr(run.config, "name", None) or run.path.name
        existing = self._resumable(run.path / rundir.MLFLOW)
        params = dict(tracking.flatten(run.config.to_dict()))
        params.update({"train_images": len(run.data.train), "val_images": len(run.data.val),
                       "processes": run.ctx.world_size})
        if existing is not None:  # a resumed run: the same MLflow run, with the params it has
            self.run_id = existing.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            params = {k: v for k, v in params.items() if k not in existing.data.params}
        else:
            tags = {**tracking.base_tags(), "cifarlab.kind": "run", "cifarlab.name": name,
                    "cifarlab.run": str(run.path.resolve()), "cifarlab.recipe": run.config.recipe,
                    "cifarlab.model": str(run.config.model), **self.tags}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            created = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
            self.run_id = created.info.run_id
            fsio.write_json(run.path / rundir.MLFLOW, {
                "run_id": self.run_id, "experiment_id": self.experiment_id,
                "tracking_uri": dburl.redact(str(self.client.tracking_uri))})
        self.open = True
        entries = [Param(k, tracking.param_value(v)) for k, v in params.items()]
        for part in tracking.chunks(entries):
            self.client.log_batch(self.run_id, params=part)
        atexit.register(self._abandon)

    def _resumable(self, pointer: Any) -> Any:
        """The MLflow run this run folder logged to before, if it is in this store."""
        record = rundir.read_json(pointer) if pointer.exists() else None
        if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
            return None
        try:
            found = self.client.get_run(record["run_id"])
        except Exception:  # another store, or a deleted run: start a new one
            return None
        return found if found.info.experiment_id == self.experiment_id else None

    def _metrics(self, values: dict[str, Any], step: int) -> None:
        import math
        import time

        from mlflow.entities import Metric

        from cifarlab import tracking

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
        for part in tracking.chunks(metrics):
            self.client.log_batch(self.run_id, metrics=part)

    def _end(self, run: Any, summary: dict[str, Any]) -> None:
        import tempfile

        from mlflow.entities import RunTag

        from cifarlab import fsio, tracking

        per_epoch = set(run.history[-1]) if run.history else set()
        self._metrics({k: v for k, v in summary.items() if k not in per_epoch},
                      len(run.history))
        diagnosis = rundir.read(run.path).diagnosis()  # as `cifarlab report` judges the folder
        description = "\n".join(diagnosis.lines())
        tags = {"cifarlab.diagnosis": diagnosis.verdict,
                "cifarlab.stopped_early": str(bool(summary.get("stopped_early"))).lower(),
                "mlflow.note.content": description[:tracking.TAG_CHARS]}
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        for name in (rundir.CONFIG, rundir.METRICS, rundir.SUMMARY):
            if (run.path / name).is_file():
                self.client.log_artifact(self.run_id, str(run.path / name))
        with tempfile.TemporaryDirectory() as folder:
            fsio.write_json(Path(folder) / "diagnosis.json", diagnosis.to_dict())
            self.client.log_artifact(self.run_id, str(Path(folder) / "diagnosis.json"))
        if self.report:
            from cifarlab.report import write_report

            written = write_report(run.path, quiet=True, device=str(run.device))
            for path in sorted(written.out.iterdir()):
                if path.is_file() and not path.name.startswith("."):  # not cifarlab's own ledger
                    self.client.log_artifact(self.run_id, str(path), rundir.REPORT)
        self.close("FINISHED")

    # -- ending ------------------------------------------------------------------------------

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run (FINISHED, FAILED or KILLED) if it is still open."""
        if self.client is not None and self.run_id is not None and self.open:
            import contextlib

            with contextlib.suppress(Exception):
                self.client.set_terminated(self.run_id, status)
        self.open = False
        atexit.unregister(self._abandon)

    def set_tag(self, key: str, value: str) -> None:
        """A tag on the MLflow run, even after its end (a search tags each trial's state)."""
        if self.client is not None and self.run_id is not None:
            self._guard(self.client.set_tag, self.run_id, key, value)

    def _abandon(self) -> None:
        """At exit, a run that never reached its end (Ctrl-C, NaN, an error): KILLED; resuming
        the run folder brings the MLflow run back to RUNNING."""
        self.close("KILLED")

    def _guard(self, work: Any, *args: Any) -> None:
        """Logging that fails (the store went away) costs a warning, not the training."""
        try:
            work(*args)
        except Exception as exc:
            from cifarlab import tracking
            from cifarlab.errors import warn

            where = str(self.client.tracking_uri)
            warn(f"MLflow logging stopped: {tracking.store_error(where, exc)}; training goes on")
            self.client = None
            self.run_id = None


def loggers(config: Any, mlflow: str | bool | None = None) -> list[Callback]:
    """The loggers a run's settings switch on (TensorBoard) and MLflow if asked for (a URI, or
    True for $MLFLOW_TRACKING_URI): made where the training runs, each worker process included."""
    out: list[Callback] = []
    if config is not None and config.tensorboard:
        out.append(TensorBoard())
    if mlflow:
        out.append(MLflow(mlflow if isinstance(mlflow, str) else None))
    return out
