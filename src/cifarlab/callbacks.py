"""Callbacks: code of yours that runs while a model trains, and the TensorBoard logger.

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

from collections.abc import Callable, Iterable
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
            self.writer = SummaryWriter(self.log_dir or str(run.path / rundir.TENSORBOARD))

    def on_epoch_end(self, run: Any, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return None
        step = int(metrics["epoch"])
        for group, keys in (("loss", ("train_loss", "val_loss")),
                            ("accuracy", ("train_acc", "train_acc_clean", "val_acc"))):
            self.writer.add_scalars(group, {k: metrics[k] for k in keys}, step)
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
