"""The training loop: plain `for epoch: for batch:`, with the data set in memory as uint8.

Per epoch it measures what a learner needs to diagnose a model: the running train loss and
accuracy as Keras reports them (dropout and augmentation active), a clean train accuracy (eval
mode, on a fixed sample of train), validation loss and accuracy, learning rate and seconds.
After every epoch it writes the run directory (rundir.py has the layout), each file atomically,
and keeps the best weights by `config.monitor` in best.pt beside the final model.pt.

checkpoint.pt is rewritten after every epoch, every `checkpoint_every` steps if asked, and on
Ctrl-C. Every random draw is seeded from (seed, epoch, step, rank), so a run resumed from any
checkpoint, even after kill -9, replays the same shuffles, augmentations and dropout masks: on the
CPU, with the same number of threads, it ends with the same numbers as an uninterrupted run
(another thread count splits floating-point sums differently: equal to about 1e-7, not bit for bit).

The step itself is step.train_step, which the budget's probe and the lr finder call too. Under
torchrun each process trains on its share of every global batch with DistributedDataParallel;
rank 0 alone evaluates, prints and writes (see distributed.py). `cifarlab.train(...)` (api.py) is
the front door; this module is the engine under it.

    cifarlab train --recipe bn                                          # one process
    torchrun --standalone --nproc-per-node 2 -m cifarlab train --recipe bn   # two, with DDP
"""

from __future__ import annotations

import copy
import dataclasses
import math
import resource
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cifarlab import budget, checkpoint, distributed, fsio, optim, rundir
from cifarlab.augment import augment_batch, flip_where, mix_batch
from cifarlab.calibrate import describe as describe_calibration
from cifarlab.calibrate import temperature_scaling
from cifarlab.callbacks import Callback, as_callbacks
from cifarlab.config import TrainConfig, better, evaluates, laid_out, low_res_epochs, validate
from cifarlab.data import Dataset, classes_differ
from cifarlab.display import progress_bar
from cifarlab.errors import Interrupted, TrainingError, UserError
from cifarlab.evaluate import evaluate_split, predict_logits
from cifarlab.history import History, is_measured, measured
from cifarlab.modelsummary import forward_flops
from cifarlab.networks import Classifier
from cifarlab.prepare import Data, build_model, carve, class_weights, read_dataset, with_source
from cifarlab.runtime import available_cores, generator, pick_device, seed_for, to_batch, versions
from cifarlab.step import train_step
from cifarlab.text import plural

ModelArg = checkpoint.ModelArg

# Training has diverged when the loss stays above DIVERGED_FACTOR x ln(classes) (the loss of a
# uniform guess, where training starts: 46 nats for 10 classes, confidently wrong on every image)
# for DIVERGED_STEPS steps in a row. A high lr can spike one early step that high and recover
# (Adam at lr 0.02 on the base CNN: 38 at step 2); --lr 1e6 stays at 1e32. The run stops there,
# with the last good checkpoint kept, instead of training on into overflow.
DIVERGED_FACTOR = 20
DIVERGED_STEPS = 10
PROGRESS_EVERY = 20  # steps between refreshes of the progress bar's loss and accuracy
TALLY_EVERY = 20  # on a GPU, steps between reads of the step figures (Trainer._tally)


def tally_every(device: torch.device) -> int:
    """Steps whose loss and accuracy are read from the device at once: every step on the CPU
    (a read costs nothing there), TALLY_EVERY on a GPU (each read waits for the queued work)."""
    return 1 if device.type == "cpu" else TALLY_EVERY


@dataclass
class EpochState:
    """Progress inside one epoch: enough to continue it after an interruption."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


class _CtrlC:
    """SIGINT sets a flag that the loop checks between steps: a checkpoint is never half-updated.

    A second Ctrl-C stops at once (Python's default behaviour). Under torchrun every process gets
    the signal; only rank 0 (`announce`) says so.
    """

    def __init__(self, announce: bool = True) -> None:
        self.pressed = False
        self.announce = announce
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not in the main thread: Ctrl-C handling is the caller's
            self._previous = None
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        if self.announce:
            print("\ncifarlab: stopping after this step and saving a checkpoint "
                  "(Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _cell(value: float, width: int) -> str:
    """A fixed-width number, or "-" where there is none (no validation images, or no evaluation)."""
    return f"{value:>{width}.4f}" if math.isfinite(value) else f"{'-':>{width}}"


NO_VALIDATION = ("no validation images (--val-fraction 0): best.pt is not written, and the best "
                 "weights are the final ones (model.pt)")


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Trainer:
    """One run in progress: its config, data, model, optimizer, history and run directory.

    Callbacks (callbacks.py) get the Trainer: `trainer.path`, `.config`, `.history`, `.model`,
    `.classes`, `.epoch`, and `stop()` (after this epoch) or `interrupt()` (after this step,
    with a resumable checkpoint, as Ctrl-C).
    """

    def __init__(self, config: TrainConfig, run_dir: Path, data: Data, model: Classifier,
                 device: torch.device, callbacks: Sequence[Any] = (), quiet: bool = False,
                 started: float | None = None):
        validate(config)
        self.started = time.perf_counter() if started is None else started
        self.ctx = ctx = distributed.from_env()
        self.config, self.path, self.data, self.device = config, run_dir, data, device
        self.classes = data.classes
        self.callbacks: list[Callback] = as_callbacks(callbacks)
        self.quiet = quiet or not ctx.is_main  # rank 0 alone prints
        self.model = model
        if config.compile:
            model.compile()  # in place: its state dict keeps the same keys
        # The whole training set lives on the device as uint8 NHWC (150 MB for CIFAR-10).
        self.train_images = torch.from_numpy(data.train.images).to(device)
        self.train_labels = torch.from_numpy(data.train.labels).to(device)
        weights = class_weights(config, data)  # Keras' class_weight, in the training loss only
        self.class_weights = weights.to(device) if weights is not None else None
        self.lookahead = optim.Lookahead(model, config.batch_size) if config.lookahead else None
        # alternate_flip: a fixed random half of the images is mirrored in even epochs, the other
        # half in odd ones, so any two epochs show every image both ways (airbench).
        self.flip_parity = torch.randint(0, 2, (len(data.train),),
                                         generator=generator(config.seed, 3)).to(device)
        # What the training step calls: the model itself, or its DDP wrapper, which all-reduces
        # gradients during backward. On GPUs BatchNorm is synchronised over the processes, so it
        # normalises over the global batch; gloo has no SyncBatchNorm, so on the CPU each process
        # normalises over its own share, and rank 0's running statistics are kept (DDP
        # broadcasts them before every forward).
        self.net: nn.Module = self.model
        if ctx.enabled:
            if device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.net = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = optim.build(config, self.model)
        self.history = History()
        self.start_epoch = 0
        self.epoch_state = EpochState()
        self.steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
        # --budget may cut the last epoch short to fill its time (last_epoch_share)
        self.last_epoch_steps = max(1, math.ceil(config.last_epoch_share * self.steps_per_epoch))
        self.total_steps = (config.epochs - 1) * self.steps_per_epoch + self.last_epoch_steps
        self.diverged_loss = DIVERGED_FACTOR * max(math.log(len(self.classes)), 1.0)
        self.steps_above = 0  # consecutive steps with the loss above diverged_loss
        self.last_saved = "none yet"  # where the last good checkpoint stands, for error messages
        self.best: dict[str, Any] = {"epoch": 0, "value": None}
        self.stopped_early = False
        self._val_logits: tuple[int, torch.Tensor] | None = None  # (epoch, logits): see _evaluate
        self._stop_asked = False
        self._interrupt_asked = False
        # steps whose figures are still on the device: (step, lr, images, [loss sum, correct])
        self._pending: list[tuple[int, float, int, torch.Tensor]] = []
        self.tally_every = tally_every(device)

    # --------------------------------------------------------------------------------------
    # For callbacks

    def stop(self) -> None:
        """End training after the current epoch; best.pt, model.pt and summary.json are written."""
        self._stop_asked = True

    def interrupt(self) -> None:
        """End training after the current step with a resumable checkpoint, as Ctrl-C does
        (`cifarlab.Interrupted` is raised; `cl.resume(path)` goes on)."""
        self._interrupt_asked = True

    @property
    def epoch(self) -> int:
        """Epochs finished so far."""
        return len(self.history)

    # --------------------------------------------------------------------------------------
    # Checkpoints

    def _checkpoint(self, epoch: int, state: EpochState) -> dict[str, Any]:
        return {
            "format": checkpoint.CHECKPOINT_FORMAT, "version": 2,
            "config": self.config.to_dict(), "classes": self.classes,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": epoch, "history": [dict(row) for row in self.history], "best": dict(self.best),
            "lookahead": self.lookahead.state_dict() if self.lookahead else None,
            "epoch_state": dataclasses.asdict(state),
        }

    def save_checkpoint(self, epoch: int, state: EpochState) -> None:
        """Rank 0 writes checkpoint.pt atomically; weights that went non-finite are never saved,
        so the file on disk is always the last good state."""
        where = f"epoch {epoch + 1}, step {state.step}" if state.step else f"end of epoch {epoch}"
        # Every process checks (their weights are identical), so all of them stop together.
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise TrainingError(
                f"the weights became non-finite at {where}; the last good checkpoint "
                f"({self.last_saved}) is in {self.path}. Try a lower --lr.")
        if self.ctx.is_main:
            checkpoint.save(self.path / rundir.CHECKPOINT, self._checkpoint(epoch, state))
        self.last_saved = where

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint; one that does not fit this run is a UserError."""
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            if self.lookahead is not None:
                self.lookahead.load_state_dict(saved["lookahead"])
            self.history = History(dict(row) for row in saved["history"])
            self.start_epoch = int(saved["epoch"])
            es = saved["epoch_state"]
            self.epoch_state = EpochState(int(es["step"]), float(es["loss_sum"]),
                                          int(es["correct"]), int(es["seen"]),
                                          float(es["seconds"]))
            best = saved.get("best") or {}
            self.best = {"epoch": int(best.get("epoch", 0)), "value": best.get("value")}
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"the checkpoint in {self.path} does not fit this run "
                            f"({first_line})") from exc
        state = self.epoch_state
        if not 0 <= state.step < self.steps_per_epoch:
            raise UserError(f"{self.path / rundir.CHECKPOINT} is damaged: it stopped at step "
                            f"{state.step} of an epoch of {self.steps_per_epoch} steps")
        self.last_saved = (f"epoch {self.start_epoch + 1}, step {state.step}" if state.step
                           else f"end of epoch {self.start_epoch}")

    def _model_record(self, weights: str, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return checkpoint.model_record(self.model, self.config.model, self.classes,
                                       self.config.to_dict(), metrics, epoch, weights)

    def _keep_if_best(self, row: dict[str, Any]) -> None:
        """best.pt follows the monitored metric: higher val_acc or lower val_loss is better."""
        value = row[self.config.monitor]
        if not better(self.config.monitor, value, self.best["value"]) or not math.isfinite(value):
            return
        self.best = {"epoch": row["epoch"], "value": value}
        if self.ctx.is_main:
            checkpoint.save(self.path / rundir.BEST, self._model_record("best", row["epoch"], row))

    # --------------------------------------------------------------------------------------
    # The loop

    def write_config(self) -> None:
        record = {"config": self.config.to_dict(), "classes": self.classes,
                  "train_images": len(self.data.train), "val_images": len(self.data.val),
                  "device": str(self.device), "threads": torch.get_num_threads(),
                  "processes": self.ctx.world_size, "versions": versions(),
                  "command": " ".join(sys.argv)}
        fsio.write_json(self.path / rundir.CONFIG, record)

    def _call(self, hook: str, *args: Any) -> bool:
        """Call each callback's `hook`; True if any asked to stop."""
        stop = False
        for callback in self.callbacks:
            if getattr(callback, hook)(self, *args) is True:
                stop = True
        return stop

    def fit(self) -> dict[str, Any]:
        """Train from where the run stands to its last epoch (or an early stop); summary.json."""
        if self.ctx.is_main:  # (temp files a killed write left behind went when rundir.lock was taken)
            self.write_config()
        self._print_header()
        try:
            self._call("on_train_begin")
            with _CtrlC(announce=self.ctx.is_main) as ctrl_c:
                for epoch in range(self.start_epoch, self.config.epochs):
                    state = self.epoch_state if epoch == self.start_epoch else EpochState()
                    row = self._train_epoch(epoch, state, ctrl_c)
                    if self._end_epoch(epoch, row, ctrl_c):
                        break
        except KeyboardInterrupt:  # a second Ctrl-C, or one inside a callback
            if (self.path / rundir.CHECKPOINT).is_file():
                raise Interrupted(self.path) from None
            raise
        return self._finish()

    def _end_epoch(self, epoch: int, row: dict[str, Any], ctrl_c: _CtrlC) -> bool:
        """Record the epoch (history, best.pt, checkpoint, metrics.csv, its row); True to stop."""
        config = self.config
        self.history.append(row)
        self._keep_if_best(row)
        self.save_checkpoint(epoch + 1, EpochState())
        if self.ctx.is_main:
            rundir.write_metrics(self.path, self.history)
        self._print_row(row)
        asked = self._call("on_epoch_end", row) or self._stop_asked
        patience = (config.early_stop and is_measured(row, "train_acc_clean")
                    and epoch + 1 - self.best["epoch"] >= config.early_stop)
        interrupt, stop = distributed.all_sum(  # every process agrees on both
            [ctrl_c.pressed or self._interrupt_asked, bool(asked or patience)], self.device)
        last = epoch + 1 == config.epochs
        if interrupt and not last:
            raise Interrupted(self.path)
        if stop and not last:
            self.stopped_early = True
            if not is_measured(row, "train_acc_clean"):  # stopped between evaluations: measure it
                row.update(self._evaluate(epoch + 1))
                self._keep_if_best(row)
                self.save_checkpoint(epoch + 1, EpochState())  # its history holds the new row
                if self.ctx.is_main:
                    rundir.write_metrics(self.path, self.history)
                self._print_row(row)
            if not self.quiet:
                why = (f"no better {config.monitor} for {plural(config.early_stop, 'epoch')}"
                       if patience else "a callback asked to stop")
                print(f"stopping after epoch {epoch + 1}: {why}; best epoch "
                      f"{self.best['epoch']}", flush=True)
        return bool(stop)

    def _finish(self) -> dict[str, Any]:
        config, main = self.config, self.ctx.is_main
        summary = self.summary()
        if not self.has_val and not self.quiet:
            print(f"note: {NO_VALIDATION}", flush=True)
        plain = self._final_val_logits() if main else None  # the last evaluation's, if current
        if config.tta and self.has_val:  # the final figure with TTA (6 views: see evaluate)
            tta_started = time.perf_counter()
            labels = torch.from_numpy(self.data.val.labels)
            tta = [(predict_logits(self.model, self.data.val.images, self.device, tta=True,
                                   tta_fraction=config.tta_fraction, plain=plain).argmax(1)
                    == labels).float().mean().item() if main else 0.0]
            summary["val_acc_tta"] = distributed.from_main(tta, self.device)[0]
            summary["tta_seconds"] = time.perf_counter() - tta_started
            if not self.quiet:
                print(f"val_acc with test-time augmentation: {summary['val_acc_tta']:.4f} "
                      f"({summary['tta_seconds']:.1f} s)", flush=True)
        same = self.best["epoch"] == len(self.history)  # best.pt holds the final weights
        calibration: dict[str, Any] = {}
        if config.calibrate and main and self.has_val:
            calibration = self._calibrate(self.model, "final (and best)" if same else "final", plain)
            summary.update(calibration)
        summary["wall_seconds"] = time.perf_counter() - self.started
        summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if main:
            if config.calibrate and self.has_val and (self.path / rundir.BEST).is_file():
                self._calibrate_best(calibration if same else None)
            checkpoint.save(self.path / rundir.FINAL,
                            self._model_record("final", len(self.history), summary))
            fsio.write_json(self.path / rundir.SUMMARY, summary)
        self._call("on_train_end", summary)
        return summary

    def _train_epoch(self, epoch: int, state: EpochState, ctrl_c: _CtrlC) -> dict[str, Any]:
        """One epoch of steps (from `state`, where an interrupted epoch stopped), then its scores."""
        order = torch.randperm(len(self.data.train), generator=generator(self.config.seed, epoch))
        order = order.to(self.device)  # the same global order on every process
        self.net.train()
        started = time.perf_counter() - state.seconds
        with self._progress_bar(epoch, state) as bar:
            for step in range(state.step, self.steps_in(epoch)):
                idx = order[step * self.config.batch_size:(step + 1) * self.config.batch_size]
                if len(idx) < 2 * self.ctx.world_size:  # a batch of one breaks BatchNorm (1 in 50,000)
                    continue
                mine = idx[self.ctx.rank::self.ctx.world_size]  # this process's share of the batch
                images, targets = self._batch(epoch, step, mine)
                lr = optim.lr_at(self.config, (epoch * self.steps_per_epoch + step) / self.total_steps,
                                 self.history)
                optim.set_lr(self.optimizer, lr, epoch + step / self.steps_per_epoch)
                loss, logits = train_step(self.net, self.optimizer, images, targets, self.config,
                                          weight=len(mine) * self.ctx.world_size / len(idx),
                                          class_weights=self.class_weights)
                # Mixed images (mixup, cutmix) count as their larger share's class in train_acc.
                labels = targets if targets.ndim == 1 else targets.argmax(1)
                stop = self._tally(state, loss, logits, labels, ctrl_c, epoch, step, lr)
                bar.update(1)
                if state.seen and (step % PROGRESS_EVERY == 0 or step + 1 == self.steps_in(epoch)):
                    bar.set_postfix(loss=f"{state.loss_sum / state.seen:.4f}",
                                    acc=f"{state.correct / state.seen:.4f}")
                if (stop or self._checkpoint_due(step)) and step + 1 < self.steps_in(epoch):
                    state.seconds = time.perf_counter() - started
                    self.save_checkpoint(epoch, state)
                    if stop:
                        raise Interrupted(self.path)
            if self._pending:  # the epoch's last batch was skipped (a batch of one)
                self._read_pending(state, ctrl_c, epoch)
        if self.lookahead is not None and epoch + 1 == self.config.epochs:
            self.lookahead.update(1.0, final=True)
        return self._scores(epoch, state, started)

    def _batch(self, epoch: int, step: int, mine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's images and targets for a step, augmented as configured: class indices,
        or class probabilities where mixup or cutmix mixed the images. Every draw is seeded per
        (epoch, step, rank), so a resume at any step draws the same numbers."""
        config, rank = self.config, self.ctx.rank
        images = to_batch(self.train_images[mine], self.device)
        targets = self.train_labels[mine]
        if config.alternate_flip:
            images = flip_where(images, (self.flip_parity[mine] + epoch) % 2 == 1)
        if config.augment.active:
            images = augment_batch(config.augment, images, generator(config.seed, epoch, step, 1, rank))
        if config.augment.mixes_labels:
            images, targets = mix_batch(config.augment, images, targets, len(self.classes),
                                        generator(config.seed, epoch, step, 4, rank))
        if epoch < low_res_epochs(config):  # progressive resizing: cheaper early epochs
            images = F.interpolate(images, size=(config.low_res,) * 2, mode="bilinear",
                                   antialias=True, align_corners=False)
        torch.manual_seed(seed_for(config.seed, epoch, step, 2, rank))  # dropout masks
        return images, targets

    def _tally(self, state: EpochState, loss: torch.Tensor, logits: torch.Tensor,
               labels: torch.Tensor, ctrl_c: _CtrlC, epoch: int, step: int, lr: float) -> bool:
        """Add a step to the epoch's running figures; True if training must stop after it.

        Small all-reduces give every process the global sums and the stop flag, so all of them
        report the same loss, stop on a diverged loss at the same step, and stop on Ctrl-C (or a
        callback's interrupt()) at the same step. A step's figures stay on the device until
        `tally_every` steps have gathered (1 on the CPU; on a GPU, reading a number waits for all
        the queued work, so a read every step would leave the GPU idle while Python launches the
        next step): then each step is checked and reported in order, as if read at once, and a
        stop lands on such a step. An epoch's last step and a checkpoint's step always read.
        """
        done = epoch * self.steps_per_epoch + step + 1
        if self.lookahead is not None and done % self.lookahead.every == 0:
            self.lookahead.update(done / self.total_steps)
        self._pending.append((step, lr, len(labels),
                              torch.stack([loss.detach().double() * len(labels),
                                           (logits.argmax(1) == labels).sum().double()])))
        if (len(self._pending) < self.tally_every and step + 1 < self.steps_in(epoch)
                and not self._checkpoint_due(step)):
            return False
        return self._read_pending(state, ctrl_c, epoch)

    def _checkpoint_due(self, step: int) -> bool:
        """Whether `checkpoint_every` saves after this step of an epoch (its figures are read
        first, so the checkpoint's running figures are complete)."""
        every = self.config.checkpoint_every
        return bool(every) and (step + 1) % every == 0

    def _read_pending(self, state: EpochState, ctrl_c: _CtrlC, epoch: int) -> bool:
        """Read the gathered steps' figures (one all-reduce), check and report each step in
        order, then read the stop flag; True if training must stop."""
        pending, self._pending = self._pending, []
        figures = torch.cat([torch.stack([f for *_, f in pending]).flatten(),
                             torch.tensor([n for _, _, n, _ in pending], dtype=torch.float64,
                                          device=self.device)])
        sums = distributed.all_sum(figures, self.device)
        for i, (at, at_lr, _, _) in enumerate(pending):
            loss_sum, correct, seen = sums[2 * i], sums[2 * i + 1], sums[2 * len(pending) + i]
            step_loss = loss_sum / seen
            self.steps_above = self.steps_above + 1 if step_loss > self.diverged_loss else 0
            if not math.isfinite(step_loss) or self.steps_above >= DIVERGED_STEPS:
                why = ("became " + str(step_loss) if not math.isfinite(step_loss) else
                       f"diverged: {step_loss:.4g}, over {self.diverged_loss:.0f} ({DIVERGED_FACTOR}x "
                       f"the loss of a uniform guess) for {DIVERGED_STEPS} steps")
                raise TrainingError(
                    f"loss {why} at epoch {epoch + 1}, step {at + 1}, lr {at_lr:.3g}; the last good "
                    f"checkpoint ({self.last_saved}) is in {self.path}. Try a lower --lr.")
            state.loss_sum += loss_sum
            state.correct += int(correct)
            state.seen += int(seen)
            state.step = at + 1
            self._call("on_step_end", {"epoch": epoch + 1, "step": state.step,
                                       "loss": state.loss_sum / state.seen,
                                       "acc": state.correct / state.seen})
        return bool(distributed.all_sum([ctrl_c.pressed or self._interrupt_asked], self.device)[0])

    @contextmanager
    def _progress_bar(self, epoch: int, state: EpochState) -> Iterator[Any]:
        with progress_bar(total=self.steps_in(epoch), initial=state.step, unit="step", leave=False,
                          desc=f"epoch {epoch + 1}/{self.config.epochs}", disable=self.quiet,
                          file=sys.stderr, dynamic_ncols=True, mininterval=0.5) as bar:
            yield bar

    def _scores(self, epoch: int, state: EpochState, started: float) -> dict[str, Any]:
        """The epoch's row of metrics.csv: the running train figures, and the evaluation's in the
        epochs `eval_every` picks (NaN, an empty cell, in the others)."""
        train_seconds = time.perf_counter() - started
        skipped = {"train_acc_clean": math.nan, "val_loss": math.nan, "val_acc": math.nan}
        scores = self._evaluate(epoch + 1) if evaluates(self.config, epoch + 1) else skipped
        # The lr in the row is the one the epoch's last step used (the schedule at its start).
        last_step = epoch * self.steps_per_epoch + self.steps_in(epoch) - 1
        return {
            "epoch": epoch + 1,
            "train_loss": state.loss_sum / max(1, state.seen),
            "train_acc": state.correct / max(1, state.seen), **scores,
            "lr": optim.lr_at(self.config, last_step / self.total_steps, self.history),
            "seconds": time.perf_counter() - started, "train_seconds": train_seconds,
        }

    def steps_in(self, epoch: int) -> int:
        """Steps of epoch `epoch` (from 0): all of them, but in a last epoch cut short."""
        return self.last_epoch_steps if epoch + 1 == self.config.epochs else self.steps_per_epoch

    def _evaluate(self, epoch: int) -> dict[str, float]:
        """Clean train accuracy and val loss and accuracy of the weights after `epoch` (from 1).
        Rank 0 evaluates on the full sets, exactly as one process would; the others wait for its
        numbers. The val logits are kept: the final TTA and calibration reuse them."""
        scores = [0.0, 0.0, 0.0]
        if self.ctx.is_main:
            clean = evaluate_split(self.model, self.data.clean, self.device)
            scores = [clean["accuracy"], math.nan, math.nan]  # no val: metrics.csv's empty cells
            if self.has_val:
                logits = predict_logits(self.model, self.data.val.images, self.device)
                labels = torch.from_numpy(self.data.val.labels)
                scores[1:] = [F.cross_entropy(logits, labels).item(),
                              (logits.argmax(1) == labels).float().mean().item()]
                self._val_logits = (epoch, logits)
        clean_acc, val_loss, val_acc = distributed.from_main(scores, self.device)
        return {"train_acc_clean": clean_acc, "val_loss": val_loss, "val_acc": val_acc}

    def _final_val_logits(self) -> torch.Tensor | None:
        """The val logits of the final weights at temperature 1, if the last epoch's evaluation
        (in this process: not before a resume) computed them."""
        kept = self._val_logits
        if kept is None or kept[0] != len(self.history) or float(self.model.temperature) != 1:
            return None
        return kept[1]

    @property
    def has_val(self) -> bool:
        """False for a final fit on every training image (--val-fraction 0)."""
        return len(self.data.val) > 0

    def _calibrate(self, model: Classifier, which: str,
                   logits: torch.Tensor | None = None) -> dict[str, float]:
        """Fit the temperature of `model` on the validation split (calibrate.py); the predicted
        classes, and so every accuracy, stay as they are. `logits`: its val logits at temperature
        1, if known already."""
        model.temperature.fill_(1.0)
        if logits is None:
            logits = predict_logits(model, self.data.val.images, self.device)
        result = temperature_scaling(logits, torch.from_numpy(self.data.val.labels))
        model.temperature.fill_(result["temperature"])  # 1 where the fit would not help
        if not self.quiet:
            print(describe_calibration(which, result), flush=True)
        return result

    def _calibrate_best(self, final: dict[str, Any] | None) -> None:
        """best.pt's temperature: fitted on its own weights, or the final one's (`final`, its
        calibration) when they are the same epoch, fitted and said once."""
        record = checkpoint.load(self.path / rundir.BEST, checkpoint.MODEL_FORMAT)
        best = copy.deepcopy(self.model)
        best.load_state_dict(record["state_dict"])
        result = self._calibrate(best, "best") if final is None else final
        best.temperature.fill_(float(result["temperature"]))
        record["metrics"] = {**record.get("metrics", {}), **result}
        record["state_dict"] = {k: v.detach().cpu().contiguous() for k, v in best.state_dict().items()}
        checkpoint.save(self.path / rundir.BEST, record)

    def summary(self) -> dict[str, Any]:
        """summary.json. Without validation images the val figures are None (JSON null) and the
        best weights are the final ones, which `no_validation` says."""
        last = self.history[-1]
        total = sum(r["seconds"] for r in self.history)
        val: dict[str, Any] = {"val_loss": None, "val_acc": None, "best_val_acc": None,
                               "best_epoch": None, "best_weights_epoch": len(self.history),
                               "best_weights_value": None, "no_validation": NO_VALIDATION}
        if self.has_val:
            best = max(measured(self.history), key=lambda r: r["val_acc"])
            val = {"val_loss": last["val_loss"], "val_acc": last["val_acc"],
                   "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
                   "best_weights_epoch": self.best["epoch"], "best_weights_value": self.best["value"]}
        return {
            "recipe": self.config.recipe, "model": self.config.model, "epochs": len(self.history),
            "train_loss": last["train_loss"], "train_acc": last["train_acc"],
            "train_acc_clean": last["train_acc_clean"], **val, "monitor": self.config.monitor,
            "final_epoch": len(self.history), "stopped_early": self.stopped_early,
            "steps_per_epoch": self.steps_per_epoch,
            "seconds_per_epoch": total / len(self.history), "total_seconds": total,
            "train_images_per_second": len(self.data.train) * self._epochs_trained()
            / max(1e-9, sum(r["train_seconds"] for r in self.history)),
            "device": str(self.device), "threads": torch.get_num_threads(),
            "processes": self.ctx.world_size,
        }

    def _epochs_trained(self) -> float:
        """Epochs of images trained, a last epoch cut short counted by its share."""
        done = len(self.history)
        return done - (1 - self.last_epoch_steps / self.steps_per_epoch
                       if done == self.config.epochs else 0)

    # --------------------------------------------------------------------------------------
    # Console output: one fixed-width row per epoch

    def _print_header(self) -> None:
        if self.quiet:
            return
        c = self.config
        params = sum(p.numel() for p in self.model.parameters())
        flops = forward_flops(self.model)
        val = (f"{len(self.data.val)} val images" if self.has_val
               else "no validation (--val-fraction 0: the final fit on all training images)")
        own = ":" in c.model  # your own network: name it, and say whose defaults it trains with
        what = (f"your model {c.model.rsplit(':', 1)[-1]}" if own
                else f"recipe {c.recipe} (model {c.model}")
        print(f"{c.name + ': ' if c.name else ''}{what}, {params:,} "
              f"parameters, {flops / 1e6:,.1f} MFLOPs per image forward{'' if own else ')'}: "
              f"{len(self.data.train)} train images / {val}, {c.epochs} "
              f"{'epoch' if c.epochs == 1 else 'epochs'} of {self.steps_per_epoch} steps"
              + (f" (the last {self.last_epoch_steps})" if self.last_epoch_steps < self.steps_per_epoch
                 else "") + ", "
              f"batch {c.batch_size}, {self.device} x{torch.get_num_threads()} threads"
              + (f" x{self.ctx.world_size} processes" if self.ctx.enabled else ""))
        if own:
            print(f"settings: {c.optimizer} lr {c.lr:g}, {c.schedule} schedule, batch "
                  f"{c.batch_size}, {c.epochs} epochs{', augmentation' if c.augment.active else ''}"
                  f" (recipe '{c.recipe}'s defaults where you set none)")
        if c.eval_every != 1:  # the empty cells in between are on purpose
            print(f"evaluating every {c.eval_every} epochs and after the last" if c.eval_every else
                  "evaluating after the last epoch only", f"(eval_every {c.eval_every}): the time "
                  "goes to training")
        print(f"run directory: {self.path}")
        if self.class_weights is not None:
            print(self._class_weight_line(), flush=True)
        print(f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'clean_acc':>9} "
              f"{'val_loss':>8} {'val_acc':>7} {'lr':>8} {'seconds':>7} {'eta':>7}", flush=True)

    def _class_weight_line(self) -> str:
        """The loss's class weights: each class's for a few classes, the range for many."""
        assert self.class_weights is not None
        pairs = list(zip(self.class_weights.tolist(), self.classes, strict=True))
        how = "balanced" if self.config.class_weight == "balanced" else "as given"
        if len(pairs) <= 12:
            shown = ", ".join(f"{name} {w:.3g}" for w, name in pairs)
        else:
            pairs.sort()
            shown = f"from {pairs[0][0]:.3g} ({pairs[0][1]}) to {pairs[-1][0]:.3g} ({pairs[-1][1]})"
        return f"class weights in the training loss ({how}): {shown}"

    def _print_row(self, row: dict[str, Any]) -> None:
        if self.quiet:
            return
        done = len(self.history)
        mean_seconds = sum(r["seconds"] for r in self.history) / done
        eta = _format_seconds(mean_seconds * (self.config.epochs - done))
        best = "*" if self.best["epoch"] == row["epoch"] else " "  # * marks the best so far
        measured = (f"{_cell(row['train_acc_clean'], 9)} {_cell(row['val_loss'], 8)} "
                    f"{_cell(row['val_acc'], 7)}")  # "-" in the epochs eval_every skips
        print(f"{row['epoch']:>5} {row['train_loss']:>10.4f} {row['train_acc']:>9.4f} {measured}{best}"
              f"{row['lr']:>8.1e} {row['seconds']:>7.1f} {eta:>7}", flush=True)


# ------------------------------------------------------------------------------------------
# Starting and resuming runs


def _prepare(config: TrainConfig, run_dir: Path, model: ModelArg, callbacks: Sequence[Any],
             quiet: bool, started: float | None, saved: dict[str, Any] | None = None,
             dataset: Dataset | None = None) -> Trainer:
    """Device, data, budget, model: the pieces of a run, built in order and handed in."""
    started = time.perf_counter() if started is None else started
    ctx = distributed.from_env()
    quiet = quiet or not ctx.is_main
    device = pick_device(config.device, ctx.local_rank if ctx.enabled else None)
    distributed.init(ctx, device)
    torch.set_num_threads(available_cores())
    dataset = read_dataset(config, ctx, device, quiet, given=dataset)
    if saved is not None and saved.get("classes") != dataset.classes:
        raise classes_differ(dataset.classes, list(saved.get("classes") or []),
                             "; resume with the data the run trained on (--data)", whose="run")
    if config.budget is not None and saved is None:
        if ctx.enabled:
            raise UserError("--budget sizes a run for one process; leave out --nproc/torchrun")
        data = carve(dataset, config)  # the budget plans for the run's own images
        config = budget.fit(config, data, device,
                            lambda probe: build_model(probe, data, device, _copy(model)),
                            time.perf_counter() - started, quiet=quiet,
                            widths=not isinstance(model, nn.Module))  # yours is kept as it is
    data = carve(dataset, config)  # after the budget, which may choose a subset
    classifier = build_model(config, data, device, model)
    return Trainer(with_source(config, data), run_dir, data, classifier, device, callbacks, quiet,
                   started)


def _copy(model: ModelArg) -> ModelArg:
    """The budget's speed probe trains a few steps: never on the user's own module."""
    return copy.deepcopy(model) if isinstance(model, nn.Module) else model


def train(config: TrainConfig, out: str | Path | None = None, *, model: ModelArg = None,
          callbacks: Sequence[Any] = (), quiet: bool = False, started: float | None = None,
          claimed: bool = False, dataset: Dataset | None = None) -> tuple[Path, dict[str, Any]]:
    """Train a new run; returns (run directory, summary). `cifarlab.train` is the friendly form.

    `started` (a time.perf_counter() value) is when a budget's clock started, if not now.
    `claimed`: `out` is a run folder the caller already created and claimed (--nproc's parent).
    `dataset`: images in memory (arrays.py), which config.data names by their fingerprint.
    """
    ctx = distributed.from_env()
    existed = out is not None and Path(out).is_dir()
    if ctx.is_main and not claimed:
        run_dir = rundir.create(out, rundir.stem(config.recipe, config.model, config.name))
    elif out is None:
        raise UserError("under torchrun every process needs the same --out DIR")
    else:
        run_dir = Path(out)
    with rundir.lock(run_dir) if ctx.is_main else nullcontext():
        try:
            with distributed.owned_group(run_dir):
                trainer = _prepare(config, run_dir, model, callbacks, quiet, started, dataset=dataset)
                return run_dir, trainer.fit()
        except BaseException:
            if ctx.is_main:  # a start that failed leaves nothing behind (but a folder the user made)
                rundir.discard_if_empty(run_dir, remove_folder=not existed and not claimed)
            raise


# What --resume may change: where the data is (not what it is), where to run, and how long to
# train (only where nothing is laid out for the number of epochs: config.laid_out).
RESUMABLE = ("epochs", "data", "device", "checkpoint_every")


def resume(run_dir: str | Path, changes: dict[str, Any] | None = None, *,
           model: ModelArg = None, callbacks: Sequence[Any] = (), dataset: Dataset | None = None,
           quiet: bool = False) -> tuple[Path, dict[str, Any]]:
    """Continue a run from its checkpoint: to its own end, or (`epochs=N`) to a later one."""
    run_dir = Path(run_dir)
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    refused = sorted(set(changes) - set(RESUMABLE))
    if refused:
        flags = ", ".join("--" + key.replace("_", "-") for key in refused)
        raise UserError(f"--resume continues a run as it was configured, so {flags} cannot change; "
                        f"start a new run instead: --config {run_dir / rundir.CONFIG} --set ...")
    path = run_dir / rundir.CHECKPOINT
    saved = checkpoint.load(path, checkpoint.CHECKPOINT_FORMAT)
    try:
        stored = saved["config"]
        done = int(saved["epoch"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is damaged: {type(exc).__name__}: {exc}") from exc
    if not isinstance(stored, dict):
        raise UserError(f"{path} is damaged: its config is not a mapping")
    try:
        config = TrainConfig.from_dict(stored)
    except UserError as exc:
        raise UserError(f"{path} holds a config that does not check out: {exc}") from exc
    epochs = changes.get("epochs", config.epochs)
    if epochs < done:
        raise UserError(f"{run_dir} has already trained {plural(done, 'epoch')}; --epochs {epochs} is fewer")
    if epochs != config.epochs and laid_out(config):
        raise UserError(f"{run_dir} uses {laid_out(config)}; it cannot be extended. Train a new "
                        "run with more --epochs")
    config = TrainConfig.from_dict({**config.to_dict(), **changes})
    if done >= config.epochs and (run_dir / rundir.FINAL).exists():
        raise UserError(f"{run_dir} is already complete ({plural(config.epochs, 'epoch')}); extend it with "
                        f"--epochs N (N > {config.epochs})")
    main = distributed.from_env().is_main
    with rundir.lock(run_dir) if main else nullcontext(), distributed.owned_group(run_dir):
        trainer = _prepare(config, run_dir, model if model is not None else _model_of(config),
                           callbacks, quiet, started=None, saved=saved, dataset=dataset)
        trainer.restore(saved)
        if not trainer.quiet:
            state = trainer.epoch_state
            print(f"resuming {run_dir} at epoch {trainer.start_epoch + 1}, step {state.step + 1}"
                  + (f" (now {plural(config.epochs, 'epoch')})" if epochs != stored.get("epochs") else ""))
        return run_dir, trainer.fit()


def _model_of(config: TrainConfig) -> ModelArg:
    """A user's model is imported only when the user names it again, never from the checkpoint."""
    from cifarlab.networks import MODELS

    if config.model in MODELS:
        return None
    raise UserError(f"this run trained the model '{config.model}', which is not registered here; "
                    f"pass it again: --model {config.model}")
