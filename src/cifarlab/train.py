"""The training loop: plain `for epoch: for batch:`, with the data set in memory as uint8.

Per epoch it measures what a learner needs to diagnose a model: the running train loss and
accuracy as Keras reports them (dropout and augmentation active), a clean train accuracy (eval
mode, on a fixed 5,000-image subset of train), validation loss and accuracy, learning rate and
seconds. It writes the run directory after every epoch, each file atomically:

    config.json    everything needed to reproduce the run, with library versions
    metrics.csv    one row per epoch: the run's ledger
    checkpoint.pt  model + optimizer + counters: `--resume` continues exactly
    model.pt       final weights, class names, normalisation (what evaluate/predict load)
    summary.json   final figures

checkpoint.pt is rewritten after every epoch, every `checkpoint_every` steps if asked, and on
Ctrl-C. Every random draw is seeded from (seed, epoch, step, rank), so a run resumed from any
checkpoint, even after kill -9, replays the same shuffles, augmentations and dropout masks: on the
CPU, with the same number of threads, it ends with the same numbers as an uninterrupted run
(another thread count splits floating-point sums differently: equal to about 1e-7, not bit for bit).

Under torchrun each process trains on its share of every global batch with
DistributedDataParallel; rank 0 alone evaluates, prints and writes (see distributed.py).

    cifarlab train --recipe bn                                          # one process
    torchrun --standalone --nproc-per-node 2 -m cifarlab train --recipe bn   # two, with DDP
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import resource
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cifarlab import __version__, budget, checkpoint, distributed, fsio
from cifarlab.augment import flip_where
from cifarlab.data import Dataset, Split, load_dataset, make_splits
from cifarlab.errors import Interrupted, TrainingError, UserError
from cifarlab.evaluate import evaluate_split, to_batch
from cifarlab.models import Classifier, FastNet, create_model
from cifarlab.recipes import TrainConfig, lr_at, validate

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "train_acc_clean", "val_loss", "val_acc",
                  "lr", "seconds", "train_seconds"]


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


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device `name` means; under torchrun, `local_rank` picks this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available")
    device = torch.device(name)
    if device.type == "cuda" and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {local_rank} has no GPU: this machine has "
                            f"{torch.cuda.device_count()}; start at most that many per machine")
        device = torch.device("cuda", local_rank)
    return device


def new_run_dir(recipe: str, root: Path = Path("runs")) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{recipe}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{recipe}-{stamp}-{suffix}"
    return path


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
    """Per-channel mean and std of uint8 HWC images, in pixel units (0..255)."""
    sample = images[:: max(1, len(images) // 10000)].reshape(-1, 3).astype(np.float64)
    return sample.mean(0).tolist(), np.maximum(sample.std(0), 1e-3).tolist()


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


def _optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam as Keras sets it up, or Nesterov SGD with a separate group for BatchNorm shifts.

    Each parameter group carries an `lr_scale`: the training loop sets lr = schedule * lr_scale.
    """
    if config.optimizer == "adam":
        # Keras' Adam defaults (eps=1e-7): the seed recipes reproduce Keras notebooks.
        return torch.optim.Adam([{"params": list(model.parameters()), "lr_scale": 1.0}],
                                lr=config.lr, eps=1e-7, weight_decay=config.weight_decay)
    norm_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
                for p in m.parameters()}
    whiten = getattr(getattr(model, "body", None), "whiten", None)
    whiten_bias = whiten.bias if whiten is not None and config.whiten_bias_epochs else None
    params = [p for p in model.parameters() if p.requires_grad and p is not whiten_bias]
    norm = [p for p in params if id(p) in norm_ids]
    rest = [p for p in params if id(p) not in norm_ids]
    scale, decay = config.bias_lr_scale, config.weight_decay
    groups: list[dict[str, Any]] = [{"params": rest, "lr_scale": 1.0, "weight_decay": decay}]
    if norm:  # a faster lr for the shifts, the same decay per step (lr * weight_decay)
        groups.append({"params": norm, "lr_scale": scale, "weight_decay": decay / scale})
    if whiten_bias is not None:
        # The whitening bias learns for the first epochs, then its lr drops to 0 (airbench: it
        # helps early and only adds noise late). An lr of 0 freezes it without touching
        # requires_grad, which DistributedDataParallel does not allow to change.
        groups.append({"params": [whiten_bias], "lr_scale": 1.0, "weight_decay": decay,
                       "until_epoch": config.whiten_bias_epochs})
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, epoch: int) -> None:
    for group in optimizer.param_groups:
        frozen = epoch >= group.get("until_epoch", math.inf)
        group["lr"] = 0.0 if frozen else lr * group.get("lr_scale", 1.0)


class Lookahead:
    """airbench's lookahead: every 5,120 images (its 5 steps) the weights move to an EMA of themselves.

    The EMA's decay grows from 0 to 0.95^5 with the cube of training progress, so early training
    is untouched and late training averages away the noise of the high learning rate. At the end
    the weights become the EMA. Buffers (BatchNorm statistics) are averaged too.
    """

    every_images = 5 * 1024  # airbench: every 5 steps of 1024 images

    def __init__(self, model: torch.nn.Module, batch_size: int):
        self.model = model
        self.every = max(1, round(self.every_images / batch_size))
        self.average = {k: v.detach().clone() for k, v in self._tensors().items()}

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, progress: float, final: bool = False) -> None:
        decay = 1.0 if final else 0.95 ** 5 * progress ** 3
        for name, tensor in self._tensors().items():
            average = self.average[name]
            average.lerp_(tensor, 1 - decay)
            tensor.copy_(average)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.average

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            self.average[name].copy_(tensor)


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _metrics_csv(history: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


class Trainer:
    """Owns one run: its data, model, optimizer and run directory.

    `checkpoint_every` K > 0 also saves a resumable checkpoint every K steps (each one costs a
    write of model and optimizer state: a few MB for the seed models).
    """

    def __init__(self, config: TrainConfig, run_dir: Path, quiet: bool = False,
                 checkpoint_every: int = 0, started: float | None = None):
        self.started = time.perf_counter() if started is None else started
        validate(config)
        if checkpoint_every < 0:
            raise UserError("--checkpoint-every must be 0 (every epoch only) or a number of steps")
        self.ctx = ctx = distributed.from_env()
        self.config, self.run_dir, self.checkpoint_every = config, run_dir, checkpoint_every
        self.quiet = quiet or not ctx.is_main  # rank 0 alone prints
        self.device = pick_device(config.device, ctx.local_rank if ctx.enabled else None)
        distributed.init(ctx, self.device)
        torch.set_num_threads(available_cores())
        dataset = self._load_dataset()
        config.data = str(dataset.source)
        self.classes = dataset.classes
        splits = make_splits(dataset, config.val_fraction, config.split_seed)
        if "val" not in splits:
            raise UserError("--val-fraction 0 leaves no validation images; use e.g. 0.1")
        train = splits["train"]
        if config.budget is not None and not ctx.enabled:
            budget.size_to_budget(config, len(train), len(splits["val"]), self.device,
                                  len(self.classes), time.perf_counter() - self.started,
                                  quiet=self.quiet)
        elif config.budget is not None:
            raise UserError("--budget sizes a run for one process; leave out --nproc/torchrun")
        if config.subset is not None:  # a seeded random sample: train is ordered by class
            train = _sample(train, config.subset, config.split_seed)
        self.train_split, self.val_split = train, splits["val"]
        self.clean_split = _sample(train, config.clean_train_size, config.split_seed + 1)
        # The whole training set lives on the device as uint8 NHWC (150 MB for CIFAR-10).
        self.train_images = torch.from_numpy(train.images).to(self.device)
        self.train_labels = torch.from_numpy(train.labels).to(self.device)

        torch.manual_seed(config.seed)
        mean, std = mean_std(train.images)
        try:
            self.model: Classifier = create_model(config.model, len(self.classes), mean, std)
        except KeyError as exc:
            raise UserError(f"unknown model '{config.model}'") from exc
        self.model.to(self.device)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if isinstance(self.model.body, FastNet):  # its whitening layer is set from the data
            sample = _sample(train, 5000, config.seed)
            with torch.no_grad():
                self.model.body.init_from_data(self.model.normalize(
                    to_batch(sample.images, self.device)))
        self.lookahead = Lookahead(self.model, config.batch_size) if config.lookahead else None
        # alternate_flip: a fixed random half of the images is mirrored in even epochs, the other
        # half in odd ones, so any two epochs show every image both ways (airbench).
        self.flip_parity = torch.randint(0, 2, (len(train),), generator=torch.Generator()
                                         .manual_seed(seed_for(config.seed, 3))).to(self.device)
        # What the training step calls: the model itself, or its DDP wrapper, which all-reduces
        # gradients during backward. On GPUs BatchNorm is synchronised over the processes, so it
        # normalises over the global batch; gloo has no SyncBatchNorm, so on the CPU each process
        # normalises over its own share, and rank 0's running statistics are kept (DDP
        # broadcasts them before every forward).
        self.net: torch.nn.Module = self.model
        if ctx.enabled:
            if self.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = _optimizer(config, self.model)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.epoch_state = EpochState()
        self.steps_per_epoch = math.ceil(len(train) / config.batch_size)
        self.last_saved = "none yet"  # where the last good checkpoint stands, for error messages

    def _load_dataset(self) -> Dataset:
        """Local rank 0 of each machine decodes the data and fills the cache; the other processes
        then read the cache. The all-reduce between is a barrier that also tells them whether the
        load failed, so that they stop quietly with rank 0 instead of waiting for it."""
        if not self.ctx.enabled:
            return load_dataset(self.config.data, quiet=self.quiet)
        dataset, error = None, None
        if self.ctx.local_rank == 0:
            try:
                dataset = load_dataset(self.config.data, quiet=self.quiet)
            except UserError as exc:
                error = exc
        if distributed.all_sum([error is not None], self.device)[0]:
            raise error or UserError("another process could not load the data")
        return dataset or load_dataset(self.config.data, quiet=True)

    # --------------------------------------------------------------------------------------
    # Checkpoints

    def _checkpoint(self, epoch: int, state: EpochState) -> dict[str, Any]:
        return {
            "format": checkpoint.CHECKPOINT_FORMAT, "version": 1,
            "config": self.config.to_dict(), "classes": self.classes,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": epoch, "history": self.history, "checkpoint_every": self.checkpoint_every,
            "lookahead": self.lookahead.state_dict() if self.lookahead else None,
            "epoch_state": {"step": state.step, "loss_sum": state.loss_sum,
                            "correct": state.correct, "seen": state.seen,
                            "seconds": state.seconds},
        }

    def save_checkpoint(self, epoch: int, state: EpochState) -> None:
        """Rank 0 writes checkpoint.pt atomically; weights that went non-finite are never saved,
        so the file on disk is always the last good state."""
        where = f"epoch {epoch + 1}, step {state.step}" if state.step else f"end of epoch {epoch}"
        # Every process checks (their weights are identical), so all of them stop together.
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise TrainingError(
                f"the weights became non-finite at {where}; the last good checkpoint "
                f"({self.last_saved}) is in {self.run_dir}. Try a lower --lr.")
        if self.ctx.is_main:
            checkpoint.save(self.run_dir / checkpoint.CHECKPOINT_FILE,
                            self._checkpoint(epoch, state))
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
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"the checkpoint in {self.run_dir} does not fit this run "
                            f"({first_line})") from exc
        state = self.epoch_state
        self.last_saved = (f"epoch {self.start_epoch + 1}, step {state.step}" if state.step
                           else f"end of epoch {self.start_epoch}")

    # --------------------------------------------------------------------------------------
    # The loop

    def write_config(self) -> None:
        record = {"config": self.config.to_dict(), "classes": self.classes,
                  "train_images": len(self.train_split), "val_images": len(self.val_split),
                  "device": str(self.device), "threads": torch.get_num_threads(),
                  "processes": self.ctx.world_size, "versions": versions(),
                  "command": " ".join(sys.argv)}
        fsio.write_json(self.run_dir / "config.json", record)

    def fit(self) -> dict[str, Any]:
        config, main = self.config, self.ctx.is_main
        if main:
            fsio.make_dir(self.run_dir)
            for stale in self.run_dir.glob(".*.tmp"):  # left by a write that kill -9 cut short
                stale.unlink(missing_ok=True)
            self.write_config()
        self._print_header()
        with _StopFlag(announce=main) as flag:
            for epoch in range(self.start_epoch, config.epochs):
                state = self.epoch_state if epoch == self.start_epoch else EpochState()
                row = self._train_epoch(epoch, state, flag)
                self.history.append(row)
                self.save_checkpoint(epoch + 1, EpochState())
                if main:
                    fsio.write_text(self.run_dir / "metrics.csv", _metrics_csv(self.history))
                self._print_row(row)
                stop = distributed.all_sum([flag.stop], self.device)[0] > 0  # all agree
                if stop and epoch + 1 < config.epochs:
                    raise Interrupted(self.run_dir)
        summary = self.summary()
        if config.tta:  # the final figure with test-time augmentation (6 views: see evaluate)
            tta_started = time.perf_counter()
            tta = [evaluate_split(self.model, self.val_split, self.device, tta=True)["accuracy"]
                   if main else 0.0]
            summary["val_acc_tta"] = distributed.from_main(tta, self.device)[0]
            summary["tta_seconds"] = time.perf_counter() - tta_started
            if not self.quiet:
                print(f"val_acc with test-time augmentation: {summary['val_acc_tta']:.4f} "
                      f"({summary['tta_seconds']:.1f} s)", flush=True)
        summary["wall_seconds"] = time.perf_counter() - self.started
        summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if main:
            checkpoint.save(self.run_dir / checkpoint.MODEL_FILE, checkpoint.model_record(
                self.model, config.model, self.classes, config.to_dict(), summary))
            fsio.write_json(self.run_dir / "summary.json", summary)
        return summary

    def _train_epoch(self, epoch: int, state: EpochState, flag: _StopFlag) -> dict[str, Any]:
        config, ctx, batch = self.config, self.ctx, self.config.batch_size
        n, steps = len(self.train_split), self.steps_per_epoch
        # The same global order on every process; each takes every world_size-th image of a batch.
        order = torch.randperm(n, generator=torch.Generator().manual_seed(
            seed_for(config.seed, epoch))).to(self.device)
        self.net.train()
        started = time.perf_counter() - state.seconds
        bar = tqdm(total=steps, initial=state.step, desc=f"epoch {epoch + 1}/{config.epochs}",
                   unit="step", leave=False, disable=self.quiet, file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5)
        use_amp = self.device.type == "cuda"
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
                    images = config.augment(images, torch.Generator().manual_seed(
                        seed_for(config.seed, epoch, step, 1, ctx.rank)))
                torch.manual_seed(seed_for(config.seed, epoch, step, 2, ctx.rank))  # dropout
                lr = lr_at(config, (epoch * steps + step) / (config.epochs * steps))
                set_lr(self.optimizer, lr, epoch)
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
                        f"the last good checkpoint ({self.last_saved}) is in {self.run_dir}. "
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
                every = self.checkpoint_every
                if (stop or (every and state.step % every == 0)) and step + 1 < steps:
                    state.seconds = time.perf_counter() - started
                    self.save_checkpoint(epoch, state)
                    if stop:
                        raise Interrupted(self.run_dir)
        if self.lookahead is not None and epoch + 1 == config.epochs:
            self.lookahead.update(1.0, final=True)
        train_seconds = time.perf_counter() - started
        # Rank 0 evaluates on the full sets, exactly as one process would; the others wait for
        # its numbers.
        scores = [0.0, 0.0, 0.0]
        if ctx.is_main:
            clean = evaluate_split(self.model, self.clean_split, self.device)
            val = evaluate_split(self.model, self.val_split, self.device)
            scores = [clean["accuracy"], val["loss"], val["accuracy"]]
        clean_acc, val_loss, val_acc = distributed.from_main(scores, self.device)
        return {
            "epoch": epoch + 1,
            "train_loss": state.loss_sum / max(1, state.seen),
            "train_acc": state.correct / max(1, state.seen),
            "train_acc_clean": clean_acc,
            "val_loss": val_loss, "val_acc": val_acc, "lr": lr_at(
                config, (epoch + 1) * steps / (config.epochs * steps) - 1e-9),
            "seconds": time.perf_counter() - started, "train_seconds": train_seconds,
        }

    def summary(self) -> dict[str, Any]:
        last = self.history[-1]
        best = max(self.history, key=lambda r: r["val_acc"])
        total = sum(r["seconds"] for r in self.history)
        return {
            "recipe": self.config.recipe, "model": self.config.model, "epochs": len(self.history),
            "train_loss": last["train_loss"], "train_acc": last["train_acc"],
            "train_acc_clean": last["train_acc_clean"], "val_loss": last["val_loss"],
            "val_acc": last["val_acc"], "best_val_acc": best["val_acc"],
            "best_epoch": best["epoch"], "seconds_per_epoch": total / len(self.history),
            "total_seconds": total,
            "train_images_per_second": len(self.train_split) * len(self.history)
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
        print(f"recipe {c.recipe} (model {c.model}): {len(self.train_split)} train / "
              f"{len(self.val_split)} val images, {c.epochs} epochs of {self.steps_per_epoch} "
              f"steps, batch {c.batch_size}, {self.device} x{torch.get_num_threads()} threads"
              + (f" x{self.ctx.world_size} processes" if self.ctx.enabled else ""))
        print(f"run directory: {self.run_dir}")
        print(f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'clean_acc':>9} "
              f"{'val_loss':>8} {'val_acc':>7} {'lr':>8} {'seconds':>7} {'eta':>7}", flush=True)

    def _print_row(self, row: dict[str, Any]) -> None:
        if self.quiet:
            return
        done = len(self.history)
        mean_seconds = sum(r["seconds"] for r in self.history) / done
        eta = _format_seconds(mean_seconds * (self.config.epochs - done))
        print(f"{row['epoch']:>5} {row['train_loss']:>10.4f} {row['train_acc']:>9.4f} "
              f"{row['train_acc_clean']:>9.4f} {row['val_loss']:>8.4f} {row['val_acc']:>7.4f} "
              f"{row['lr']:>8.1e} {row['seconds']:>7.1f} {eta:>7}", flush=True)


def train(config: TrainConfig, out: Path | None = None, quiet: bool = False,
          checkpoint_every: int = 0, started: float | None = None) -> dict[str, Any]:
    """Train a new run; returns its summary. The Python form of `cifarlab train`.

    `started` (a time.perf_counter() value) is when the budget's clock started, if not now.
    """
    run_dir = out or new_run_dir(config.recipe)
    if (run_dir / checkpoint.CHECKPOINT_FILE).exists():
        raise UserError(f"{run_dir} already holds a run; use --resume, or another --out")
    with distributed.owned_group():
        return Trainer(config, run_dir, quiet=quiet, checkpoint_every=checkpoint_every,
                       started=started).fit()


def resume(run_dir: Path, quiet: bool = False, device: str | None = None,
           checkpoint_every: int | None = None) -> dict[str, Any]:
    """Continue an interrupted run from its checkpoint to the same final state."""
    path = run_dir / checkpoint.CHECKPOINT_FILE
    saved = checkpoint.load(path, checkpoint.CHECKPOINT_FORMAT)
    try:
        config = TrainConfig.from_dict(saved["config"])
        done = int(saved["epoch"])
        every = int(saved.get("checkpoint_every", 0)) if checkpoint_every is None else checkpoint_every
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} is damaged: {type(exc).__name__}: {exc}") from exc
    if device is not None:
        config.device = device
    if done >= config.epochs and (run_dir / checkpoint.MODEL_FILE).exists():
        raise UserError(f"{run_dir} is already complete ({config.epochs} epochs)")
    with distributed.owned_group():
        trainer = Trainer(config, run_dir, quiet=quiet, checkpoint_every=every)
        trainer.restore(saved)
        if not trainer.quiet:
            state = trainer.epoch_state
            print(f"resuming {run_dir} at epoch {trainer.start_epoch + 1}, step {state.step + 1}")
        return trainer.fit()


def latest_run(root: Path = Path("runs")) -> Path:
    runs = sorted((p for p in root.glob("*") if (p / checkpoint.CHECKPOINT_FILE).exists()),
                  key=lambda p: (p / checkpoint.CHECKPOINT_FILE).stat().st_mtime)
    if not runs:
        raise UserError(f"no run to resume in {root}/; pass the run directory: --resume DIR")
    return runs[-1]
