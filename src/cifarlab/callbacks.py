"""Callbacks: code of yours that runs at the end of every epoch, and the TensorBoard logger.

A callback is any object with `on_epoch_end(run, metrics)` (and, if it likes, `on_train_begin(run)`
and `on_train_end(run, summary)`), or a plain function `f(run, metrics)`. `run` is the training
run (`run.path`, `run.config`, `run.history`, `run.model`, `run.classes`); returning True, or
calling `run.stop()`, ends training after this epoch (best.pt and model.pt are still written).

    >>> import cifarlab as cl
    >>> def stop_at_70(run, metrics):
    ...     return metrics["val_acc"] >= 0.70
    >>> run = cl.train("base", epochs=30, callbacks=[stop_at_70])    # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

from cifarlab import rundir
from cifarlab.errors import UserError


class TensorBoard:
    """Scalars per epoch (losses, accuracies, lr, seconds) and, at the end, the confusion matrix
    of the validation split, into RUN/tensorboard (`tensorboard --logdir runs`)."""

    def __init__(self, log_dir: str | None = None):
        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard "
                            "(or: pip install 'cifarlab[tensorboard]')")
        self.log_dir = log_dir
        self.writer: Any = None

    def on_train_begin(self, run: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if run.ctx.is_main:
            self.writer = SummaryWriter(self.log_dir or str(run.path / rundir.TENSORBOARD))

    def on_epoch_end(self, run: Any, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
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
        from cifarlab import plots, report
        from cifarlab.evaluate import predict_logits

        logits = predict_logits(run.model, run.data.val.images, run.device)
        counts = report.confusion_counts(run.data.val.labels, logits.argmax(1).numpy(),
                                         len(run.classes))
        figure = plots.confusion(counts, run.classes, f"Confusion matrix: {run.path.name}, val")
        self.writer.add_figure("confusion_matrix", figure, len(run.history))
        self.writer.close()
        self.writer = None
