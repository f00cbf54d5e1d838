"""The training loop: plain `for epoch: for batch:`, with the data set in memory as uint8.

Per epoch it measures what a learner needs to diagnose a model: the running train loss and
accuracy as Keras reports them (dropout and augmentation active), a clean train accuracy (eval
mode, on a fixed 5,000-image subset of train), validation loss and accuracy, learning rate and
seconds. After every epoch it writes the run directory (rundir.py has the layout), each file
atomically, and keeps the best weights by `config.monitor` in best.pt beside the final model.pt.

checkpoint.pt is rewritten after every epoch, every `checkpoint_every` steps if asked, and on
Ctrl-C. Every random draw is seeded from (seed, epoch, step, rank), so a run resumed from any
checkpoint, even after kill -9, replays the same shuffles, augmentations and dropout masks: on the
CPU, with the same number of threads, it ends with the same numbers as an uninterrupted run
(another thread count splits floating-point sums differently: equal to about 1e-7, not bit for bit).

Under torchrun each process trains on its share of every global batch with
DistributedDataParallel; rank 0 alone evaluates, prints and writes (see distributed.py).
`cifarlab.trainer(...)` (api.py) is the front door; this module is the engine under it.

    cifarlab train --recipe bn                                          # one process
    torchrun --standalone --nproc-per-node 2 -m cifarlab train --recipe bn   # two, with DDP
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import platform
import resource
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from cifarlab import __version__, budget, checkpoint, distributed, fsio, optim, rundir
from cifarlab.augment import augment_batch, flip_where
from cifarlab.calibrate import ece, fit_temperature
from cifarlab.config import TrainConfig, low_res_epochs, validate
from cifarlab.data import Dataset, Split, load_dataset, make_splits
from cifarlab.errors import Interrupted, TrainingError, UserError
from cifarlab.evaluate import evaluate_split, pick_device, predict_logits, to_batch
from cifarlab.modelsummary import forward_flops
from cifarlab.networks import Classifier, create_model

ModelArg = checkpoint.ModelArg


def available_cores() -> int:
    """Threads to use: $CIFARLAB_THREADS, else the cores this process may run on.

    More threads than free cores is far worse than fewer: OpenMP threads spin-wait for each
    other, and two 2-thread trainings on 2 cores each run ~10x slower. Set CIFARLAB_THREADS=1
    for a second job running beside a first. Processes that torchrun starts on one machine share
    its cores.
    """
    env = os.environ.get("CIFARLAB_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // distributed.from_env().local_world_size)


def versions() -> dict[str, str]:
    return {"cifarlab": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def seed_for(seed: int, *keys: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, step, stream, rank ...): a hash, so
    nearby keys never share a seed (a linear mix would: epoch 1 step 0 = epoch 0 step 101)."""
    state = np.random.SeedSequence([seed % 2**64, *keys]).generate_state(1, np.uint64)
    return int(state[0] >> 1)  # torch seeds must fit in an int64


def mean_std(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 HWC images, in pixel units (0..255).

    From each channel's histogram of (up to) 10,000 images: exact, and ~10x faster than
    numpy's std over a float copy (1.4 s of every run's start before).
    """
    sample = images[:: max(1, len(images) // 10000)].reshape(-1, 3)
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for channel in range(3):
        counts = np.bincount(sample[:, channel], minlength=256).astype(np.float64)
        mean = float(counts @ values / counts.sum())
        means.append(mean)
        stds.append(max(float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum())), 1e-3))
    return means, stds


def _sample(split: Split, size: int, seed: int) -> Split:
    """A fixed random subset of `size` images (all of them if the split is smaller)."""
    if size >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:size])
    return Split(split.images[idx], split.labels[idx])


@dataclass
class EpochState:
    """Progress inside one epoch: enough to continue it after an interruption."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


class _StopFlag:
    """SIGINT sets a flag that the loop checks between steps: a checkpoint is never half-updated.

    A second Ctrl-C stops at once (Python's default behaviour). Under torchrun every process gets
    the signal; only rank 0 (`announce`) says so.
    """

    def __init__(self, announce: bool = True) -> None:
        self.stop = False
        self.announce = announce
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not in the main thread: Ctrl-C handling is the caller's
            self._previous = None
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        if self.announce:
            print("\ncifarlab: stopping after this step and saving a checkpoint "
                  "(Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _cell(value: float, width: int) -> str:
    """A fixed-width number, or "-" where there is none (no validation images)."""
    return f"{value:>{width}.4f}" if math.isfinite(value) else f"{'-':>{width}}"


NO_VALIDATION = ("no validation images (--val-fraction 0): best.pt is not written, and the best "
                 "weights are the final ones (model.pt)")


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


@dataclass
class Data:
    """The splits a run trains and validates on (uint8 NHWC arrays in memory)."""

    classes: list[str]
    source: Path
    train: Split
    val: Split
    clean: Split  # a fixed sample of train, measured in eval mode each epoch


def load_data(config: TrainConfig, ctx: distributed.Context, device: torch.device,
              quiet: bool) -> Data:
    """Decode (or read the cache of) the source and carve train/val/clean from it.

    Under torchrun, local rank 0 of each machine decodes the data and fills the cache; the other
    processes then read the cache. The all-reduce between is a barrier that also tells them
    whether the load failed, so that they stop quietly with rank 0 instead of waiting for it.
    """
    dataset: Dataset | None = None
    if not ctx.enabled:
        dataset = load_dataset(config.data, quiet=quiet)
    else:
        error = None
        if ctx.local_rank == 0:
            try:
                dataset = load_dataset(config.data, quiet=quiet)
            except UserError as exc:
                error = exc
        if distributed.all_sum([error is not None], device)[0]:
            raise error or UserError("another process could not load the data")
        dataset = dataset or load_dataset(config.data, quiet=True)
    splits = make_splits(dataset, config.val_fraction, config.split_seed)
    if "train" not in splits:
        raise UserError(f"{dataset.source} holds only a test split: it can evaluate a model "
                        "(cifarlab evaluate RUN --data SRC --split test), not train one")
    train = splits["train"]
    if config.subset is not None:  # a seeded random sample: train is ordered by class
        train = _sample(train, config.subset, config.split_seed)
    # --val-fraction 0: the final fit on every training image, with no validation at all.
    val = splits.get("val", Split(train.images[:0], train.labels[:0]))
    return Data(dataset.classes, dataset.source, train, val,
                _sample(train, config.clean_train_size, config.split_seed + 1))


def build_model(config: TrainConfig, data: Data, device: torch.device,
                model: ModelArg = None) -> Classifier:
    """The network (config.model, or `model` from Python), wrapped with the data's normalisation,
    on the device, and initialised from the data if it asks to be (`init_from_data`)."""
    torch.manual_seed(config.seed)
    mean, std = mean_std(data.train.images)
    classifier = create_model(model if model is not None else config.model, len(data.classes),
                              mean, std, config.model_kwargs)
    _check_output(classifier, len(data.classes))
    if low_res_epochs(config):
        _check_output(classifier, len(data.classes), config.low_res)
    classifier.to(device)
    if config.channels_last:
        classifier.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    init = getattr(classifier.body, "init_from_data", None)
    if callable(init):
        sample = _sample(data.train, 5000, config.seed)
        with torch.no_grad():
            init(classifier.normalize(to_batch(sample.images, device)))
    return classifier


def _check_output(model: Classifier, num_classes: int, side: int = 32) -> None:
    """A user's model must map N x 3 x side x side to N x classes: say so before training starts."""
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            out = model(torch.zeros(2, 3, side, side))
            model.train(was)
    except Exception as exc:  # the user's forward failed: one line, with the cause
        hint = (" (low_res_share trains the first epochs at this size; a model with a fixed-size "
                "head, such as the seed CNNs, cannot)" if side != 32 else "")
        raise UserError(f"the model fails on a batch of 2 x 3 x {side} x {side} images{hint}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"the model must return logits of shape (N, {num_classes}) for "
                        f"{num_classes} classes; it returned {shape}")


Callback = Any  # an object with on_epoch_end(run, metrics) (and optionally on_train_begin/end),
# or a plain function f(run, metrics); returning True stops training after this epoch.


class Trainer:
    """One run in progress: its config, data, model, optimizer, history and run directory.

    Callbacks receive the Trainer as `run`: `run.path`, `run.config`, `run.history`,
    `run.model`, `run.classes`, and `run.stop()` to end training after the current epoch.
    """

    def __init__(self, config: TrainConfig, run_dir: Path, data: Data, model: Classifier,
                 device: torch.device, callbacks: Sequence[Callback] = (), quiet: bool = False,
                 started: float | None = None):
        validate(config)
        self.started = time.perf_counter() if started is None else started
        self.ctx = ctx = distributed.from_env()
        self.config, self.path, self.data, self.device = config, run_dir, data, device
        self.classes = data.classes
        self.callbacks = list(callbacks)
        self.quiet = quiet or not ctx.is_main  # rank 0 alone prints
        self.model = model
        # The whole training set lives on the device as uint8 NHWC (150 MB for CIFAR-10).
        self.train_images = torch.from_numpy(data.train.images).to(device)
        self.train_labels = torch.from_numpy(data.train.labels).to(device)
        self.lookahead = optim.Lookahead(model, config.batch_size) if config.lookahead else None
        # alternate_flip: a fixed random half of the images is mirrored in even epochs, the other
        # half in odd ones, so any two epochs show every image both ways (airbench).
        self.flip_parity = torch.randint(0, 2, (len(data.train),), generator=torch.Generator()
                                         .manual_seed(seed_for(config.seed, 3))).to(device)
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
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.epoch_state = EpochState()
        self.steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
        self.last_saved = "none yet"  # where the last good checkpoint stands, for error messages
        self.best: dict[str, Any] = {"epoch": 0, "value": None}
        self.stopped_early = False
        self._stop_requested = False

    # --------------------------------------------------------------------------------------
    # For callbacks

    def stop(self) -> None:
        """End training after the current epoch (a callback's way to stop early)."""
        self._stop_requested = True

    @property
    def epoch(self) -> int:
        return len(self.history)

    # --------------------------------------------------------------------------------------
    # Checkpoints

    def _checkpoint(self, epoch: int, state: EpochState) -> dict[str, Any]:
        return {
            "format": checkpoint.CHECKPOINT_FORMAT, "version": 2,
            "config": self.config.to_dict(), "classes": self.classes,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": epoch, "history": self.history, "best": dict(self.best),
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
            self.history = [dict(row) for row in saved["history"]]
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
        self.last_saved = (f"epoch {self.start_epoch + 1}, step {state.step}" if state.step
                           else f"end of epoch {self.start_epoch}")

    def _model_record(self, weights: str, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return checkpoint.model_record(self.model, self.config.model, self.classes,
                                       self.config.to_dict(), metrics, epoch, weights)

    def _keep_if_best(self, row: dict[str, Any]) -> None:
        """best.pt follows the monitored metric: higher val_acc or lower val_loss is better."""
        value = row[self.config.monitor]
        previous = self.best["value"]
        better = previous is None or (value < previous if self.config.monitor == "val_loss"
                                      else value > previous)
        if not better or not math.isfinite(value):
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
            method = getattr(callback, hook, None)
            if method is None and hook == "on_epoch_end" and callable(callback):
                method = callback
            if method is not None and method(self, *args) is True:
                stop = True
        return stop

    def fit(self) -> dict[str, Any]:
        config, main = self.config, self.ctx.is_main
        if main:
            rundir.remove_stale_temp_files(self.path)  # left by a write that kill -9 cut short
            self.write_config()
        self._print_header()
        self._call("on_train_begin")
        with _StopFlag(announce=main) as flag:
            for epoch in range(self.start_epoch, config.epochs):
                state = self.epoch_state if epoch == self.start_epoch else EpochState()
                row = self._train_epoch(epoch, state, flag)
                self.history.append(row)
                self._keep_if_best(row)
                self.save_checkpoint(epoch + 1, EpochState())
                if main:
                    rundir.write_metrics(self.path, self.history)
                self._print_row(row)
                asked = self._call("on_epoch_end", row) or self._stop_requested
                patience = config.early_stop and epoch + 1 - self.best["epoch"] >= config.early_stop
                stop, ask = distributed.all_sum(  # every process agrees on both
                    [flag.stop, bool(asked or patience)], self.device)
                if stop and epoch + 1 < config.epochs:
                    raise Interrupted(self.path)
                if ask and epoch + 1 < config.epochs:
                    self.stopped_early = True
                    if not self.quiet:
                        why = (f"no better {config.monitor} for {config.early_stop} epochs"
                               if patience else "a callback asked to stop")
                        print(f"stopping after epoch {epoch + 1}: {why}; best epoch "
                              f"{self.best['epoch']}", flush=True)
                    break
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        config, main = self.config, self.ctx.is_main
        summary = self.summary()
        if not self.has_val and not self.quiet:
            print(f"note: {NO_VALIDATION}", flush=True)
        if config.tta and self.has_val:  # the final figure with TTA (6 views: see evaluate)
            tta_started = time.perf_counter()
            tta = [evaluate_split(self.model, self.data.val, self.device, tta=True,
                                  tta_fraction=config.tta_fraction)["accuracy"]
                   if main else 0.0]
            summary["val_acc_tta"] = distributed.from_main(tta, self.device)[0]
            summary["tta_seconds"] = time.perf_counter() - tta_started
            if not self.quiet:
                print(f"val_acc with test-time augmentation: {summary['val_acc_tta']:.4f} "
                      f"({summary['tta_seconds']:.1f} s)", flush=True)
        if config.calibrate and main and self.has_val:
            summary.update(self._calibrate(self.model, "final"))
        summary["wall_seconds"] = time.perf_counter() - self.started
        summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if main:
            if config.calibrate and self.has_val and (self.path / rundir.BEST).is_file():
                self._calibrate_best()
            checkpoint.save(self.path / rundir.FINAL,
                            self._model_record("final", len(self.history), summary))
            fsio.write_json(self.path / rundir.SUMMARY, summary)
        self._call("on_train_end", summary)
        return summary

    def _train_epoch(self, epoch: int, state: EpochState, flag: _StopFlag) -> dict[str, Any]:
        config, ctx, batch = self.config, self.ctx, self.config.batch_size
        n, steps = len(self.data.train), self.steps_per_epoch
        # The same global order on every process; each takes every world_size-th image of a batch.
        order = torch.randperm(n, generator=torch.Generator().manual_seed(
            seed_for(config.seed, epoch))).to(self.device)
        self.net.train()
        started = time.perf_counter() - state.seconds
        bar = tqdm(total=steps, initial=state.step, desc=f"epoch {epoch + 1}/{config.epochs}",
                   unit="step", leave=False, disable=self.quiet, file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5)
        use_amp = self.device.type == "cuda"
        low_res = epoch < low_res_epochs(config)
        with bar:
            for step in range(state.step, steps):
                idx = order[step * batch:(step + 1) * batch]
                if len(idx) < 2 * ctx.world_size:  # a batch of one breaks BatchNorm (1 in 50,000)
                    continue
                mine = idx[ctx.rank::ctx.world_size]  # this process's share of the global batch
                images = to_batch(self.train_images[mine], self.device)
                labels = self.train_labels[mine]
                if config.alternate_flip:
                    images = flip_where(images, (self.flip_parity[mine] + epoch) % 2 == 1)
                # Seeded per step, not carried over: a resume at any step draws the same numbers.
                if config.augment.active:
                    images = augment_batch(config.augment, images, torch.Generator().manual_seed(
                        seed_for(config.seed, epoch, step, 1, ctx.rank)))
                if low_res:  # progressive resizing: cheaper early epochs
                    images = F.interpolate(images, size=(config.low_res,) * 2, mode="bilinear",
                                           antialias=True, align_corners=False)
                torch.manual_seed(seed_for(config.seed, epoch, step, 2, ctx.rank))  # dropout
                lr = optim.lr_at(config, (epoch * steps + step) / (config.epochs * steps))
                optim.set_lr(self.optimizer, lr, epoch + step / steps)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = self.net(images)
                    loss = F.cross_entropy(logits.float(), labels,
                                           label_smoothing=config.label_smoothing)
                # DDP averages gradients over processes. Weighting each process's mean loss by its
                # share of the batch makes that average the gradient of the global batch's mean
                # loss, as one process would compute it, even when the batch splits unevenly.
                share = len(mine) * ctx.world_size / len(idx)
                self.optimizer.zero_grad(set_to_none=True)
                (loss * share).backward()
                self.optimizer.step()
                # One small all-reduce gives every process the global sums and the stop flag, so
                # all of them report the same loss, stop on NaN at the same step, and stop on
                # Ctrl-C at the same step.
                loss_sum, correct, seen, stop = distributed.all_sum(
                    [loss.item() * len(mine), int((logits.argmax(1) == labels).sum()), len(mine),
                     flag.stop], self.device)
                if not math.isfinite(loss_sum):
                    raise TrainingError(
                        f"loss became {loss_sum / seen} at epoch {epoch + 1}, step {step + 1}; "
                        f"the last good checkpoint ({self.last_saved}) is in {self.path}. "
                        "Try a lower --lr.")
                state.loss_sum += loss_sum
                state.correct += int(correct)
                state.seen += int(seen)
                state.step = step + 1
                done = epoch * steps + state.step
                if self.lookahead is not None and done % self.lookahead.every == 0:
                    self.lookahead.update(done / (config.epochs * steps))
                bar.update(1)
                if step % 20 == 0 or step + 1 == steps:
                    bar.set_postfix(loss=f"{state.loss_sum / state.seen:.4f}",
                                    acc=f"{state.correct / state.seen:.4f}", refresh=False)
                every = config.checkpoint_every
                if (stop or (every and state.step % every == 0)) and step + 1 < steps:
                    state.seconds = time.perf_counter() - started
                    self.save_checkpoint(epoch, state)
                    if stop:
                        raise Interrupted(self.path)
        if self.lookahead is not None and epoch + 1 == config.epochs:
            self.lookahead.update(1.0, final=True)
        train_seconds = time.perf_counter() - started
        # Rank 0 evaluates on the full sets, exactly as one process would; the others wait for
        # its numbers.
        scores = [0.0, 0.0, 0.0]
        if ctx.is_main:
            clean = evaluate_split(self.model, self.data.clean, self.device)
            val = (evaluate_split(self.model, self.data.val, self.device) if self.has_val
                   else {"loss": math.nan, "accuracy": math.nan})  # metrics.csv: empty cells
            scores = [clean["accuracy"], val["loss"], val["accuracy"]]
        clean_acc, val_loss, val_acc = distributed.from_main(scores, self.device)
        return {
            "epoch": epoch + 1,
            "train_loss": state.loss_sum / max(1, state.seen),
            "train_acc": state.correct / max(1, state.seen),
            "train_acc_clean": clean_acc,
            "val_loss": val_loss, "val_acc": val_acc, "lr": optim.lr_at(
                config, (epoch + 1) * steps / (config.epochs * steps) - 1e-9),
            "seconds": time.perf_counter() - started, "train_seconds": train_seconds,
        }

    @property
    def has_val(self) -> bool:
        """False for a final fit on every training image (--val-fraction 0)."""
        return len(self.data.val) > 0

    def _calibrate(self, model: Classifier, which: str) -> dict[str, float]:
        """Fit the temperature of `model` on the validation split (calibrate.py); the predicted
        classes, and so every accuracy, stay as they are."""
        model.temperature.fill_(1.0)
        logits = predict_logits(model, self.data.val.images, self.device)
        labels = torch.from_numpy(self.data.val.labels)
        temperature = fit_temperature(logits, labels)
        model.temperature.fill_(temperature)
        result = {"temperature": temperature, "ece": ece(logits, labels),
                  "ece_calibrated": ece(logits / temperature, labels)}
        if not self.quiet:
            print(f"calibrated the {which} weights: temperature {temperature:.3f}, expected "
                  f"calibration error {result['ece']:.3f} -> {result['ece_calibrated']:.3f} "
                  "(val split)", flush=True)
        return result

    def _calibrate_best(self) -> None:
        record = checkpoint.load(self.path / rundir.BEST, checkpoint.MODEL_FORMAT)
        best = copy.deepcopy(self.model)
        best.load_state_dict(record["state_dict"])
        record["metrics"] = {**record.get("metrics", {}), **self._calibrate(best, "best")}
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
            best = max(self.history, key=lambda r: r["val_acc"])
            val = {"val_loss": last["val_loss"], "val_acc": last["val_acc"],
                   "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
                   "best_weights_epoch": self.best["epoch"], "best_weights_value": self.best["value"]}
        return {
            "recipe": self.config.recipe, "model": self.config.model, "epochs": len(self.history),
            "train_loss": last["train_loss"], "train_acc": last["train_acc"],
            "train_acc_clean": last["train_acc_clean"], **val, "monitor": self.config.monitor,
            "final_epoch": len(self.history), "stopped_early": self.stopped_early,
            "seconds_per_epoch": total / len(self.history), "total_seconds": total,
            "train_images_per_second": len(self.data.train) * len(self.history)
            / max(1e-9, sum(r["train_seconds"] for r in self.history)),
            "device": str(self.device), "threads": torch.get_num_threads(),
            "processes": self.ctx.world_size,
        }

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
        print(f"recipe {c.recipe} (model {c.model}, {params:,} parameters, "
              f"{flops / 1e6:,.1f} MFLOPs per image forward): "
              f"{len(self.data.train)} train images / {val}, {c.epochs} epochs "
              f"of {self.steps_per_epoch} steps, batch {c.batch_size}, {self.device} "
              f"x{torch.get_num_threads()} threads"
              + (f" x{self.ctx.world_size} processes" if self.ctx.enabled else ""))
        print(f"run directory: {self.path}")
        print(f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'clean_acc':>9} "
              f"{'val_loss':>8} {'val_acc':>7} {'lr':>8} {'seconds':>7} {'eta':>7}", flush=True)

    def _print_row(self, row: dict[str, Any]) -> None:
        if self.quiet:
            return
        done = len(self.history)
        mean_seconds = sum(r["seconds"] for r in self.history) / done
        eta = _format_seconds(mean_seconds * (self.config.epochs - done))
        best = "*" if self.best["epoch"] == row["epoch"] else " "  # * marks the best so far
        print(f"{row['epoch']:>5} {row['train_loss']:>10.4f} {row['train_acc']:>9.4f} "
              f"{row['train_acc_clean']:>9.4f} {_cell(row['val_loss'], 8)} {_cell(row['val_acc'], 7)}{best}"
              f"{row['lr']:>8.1e} {row['seconds']:>7.1f} {eta:>7}", flush=True)


# ------------------------------------------------------------------------------------------
# Starting and resuming runs


def _prepare(config: TrainConfig, run_dir: Path, model: ModelArg, callbacks: Sequence[Callback],
             quiet: bool, started: float | None, saved: dict[str, Any] | None = None) -> Trainer:
    """Device, data, model (+ budget sizing): the pieces, built in order and handed in."""
    started = time.perf_counter() if started is None else started
    ctx = distributed.from_env()
    quiet = quiet or not ctx.is_main
    device = pick_device(config.device, ctx.local_rank if ctx.enabled else None)
    distributed.init(ctx, device)
    torch.set_num_threads(available_cores())
    data = load_data(config, ctx, device, quiet)
    if saved is not None and saved.get("classes") != data.classes:
        raise UserError(f"the data's classes {data.classes} differ from the run's "
                        f"{saved.get('classes')}; resume with the data the run trained on (--data)")
    config = dataclasses.replace(config, data=str(data.source))
    if config.budget is not None and saved is None:
        if ctx.enabled:
            raise UserError("--budget sizes a run for one process; leave out --nproc/torchrun")
        config = budget.fit(config, len(data.train), len(data.val), len(data.classes), device,
                            lambda: build_model(config, data, device, _copy(model)),
                            time.perf_counter() - started, quiet=quiet)
        if config.subset is not None and config.subset < len(data.train):
            data = dataclasses.replace(data, train=_sample(data.train, config.subset,
                                                           config.split_seed))
    classifier = build_model(config, data, device, model)
    return Trainer(config, run_dir, data, classifier, device, callbacks, quiet, started)


def _copy(model: ModelArg) -> ModelArg:
    """The budget's speed probe trains a few steps: never on the user's own module."""
    return copy.deepcopy(model) if isinstance(model, nn.Module) else model


def train(config: TrainConfig, out: str | os.PathLike[str] | None = None, *,
          model: ModelArg = None, callbacks: Sequence[Callback] = (), quiet: bool = False,
          started: float | None = None) -> tuple[Path, dict[str, Any]]:
    """Train a new run; returns (run directory, summary). `cifarlab.trainer` is the friendly form.

    `started` (a time.perf_counter() value) is when a budget's clock started, if not now.
    """
    ctx = distributed.from_env()
    existed = out is not None and Path(out).is_dir()
    if ctx.is_main:
        run_dir = rundir.create(out, rundir.stem(config.recipe, config.model))
    elif out is None:
        raise UserError("under torchrun every process needs the same --out DIR")
    else:
        run_dir = Path(out)
    try:
        with distributed.owned_group():
            trainer = _prepare(config, run_dir, model, callbacks, quiet, started)
            return run_dir, trainer.fit()
    except BaseException:
        if ctx.is_main:  # a start that failed leaves nothing behind (but a folder the user made)
            rundir.discard_if_empty(run_dir, remove_folder=not existed)
        raise


# What --resume may change: where the data is (not what it is), where to run, and how long to
# train (a constant schedule only: a onecycle schedule is laid out for its number of epochs).
RESUMABLE = ("epochs", "data", "device", "checkpoint_every")


def resume(run_dir: str | os.PathLike[str], changes: dict[str, Any] | None = None, *,
           model: ModelArg = None, callbacks: Sequence[Callback] = (),
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
        raise UserError(f"{run_dir} has already trained {done} epochs; --epochs {epochs} is fewer")
    if epochs != config.epochs and (config.schedule != "constant" or config.lookahead):
        raise UserError(f"{run_dir} uses a {config.schedule} schedule laid out for {config.epochs} "
                        "epochs" + (" with lookahead" if config.lookahead else "")
                        + "; it cannot be extended. Train a new run with more --epochs")
    config = TrainConfig.from_dict({**config.to_dict(), **changes})
    if done >= config.epochs and (run_dir / rundir.FINAL).exists():
        raise UserError(f"{run_dir} is already complete ({config.epochs} epochs); extend it with "
                        f"--epochs N (N > {config.epochs})")
    with distributed.owned_group():
        trainer = _prepare(config, run_dir, model if model is not None else _model_of(config),
                           callbacks, quiet, None, saved=saved)
        trainer.restore(saved)
        if not trainer.quiet:
            state = trainer.epoch_state
            print(f"resuming {run_dir} at epoch {trainer.start_epoch + 1}, step {state.step + 1}"
                  + (f" (now {config.epochs} epochs)" if epochs != stored.get("epochs") else ""))
        return run_dir, trainer.fit()


def _model_of(config: TrainConfig) -> ModelArg:
    """A user's model is imported only when the user names it again, never from the checkpoint."""
    from cifarlab.networks import MODELS

    if config.model in MODELS:
        return None
    raise UserError(f"this run trained the model '{config.model}', which is not registered here; "
                    f"pass it again: --model {config.model} (CLI) or model=... (Python)")
