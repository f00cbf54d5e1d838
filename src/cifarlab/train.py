"""The training loop: plain `for epoch: for batch:`, with the data set in memory as uint8.

Per epoch it measures what a learner needs to diagnose a model: the running train loss and
accuracy as Keras reports them (dropout and augmentation active), a clean train accuracy (eval
mode, on a fixed 5,000-image subset of train), validation loss and accuracy, learning rate and
seconds. It writes the run directory after every epoch, each file atomically:

    config.json    everything needed to reproduce the run, with library versions
    metrics.csv    one row per epoch: the run's ledger
    checkpoint.pt  model + optimizer + counters + RNG states: `--resume` continues exactly
    model.pt       final weights, class names, normalisation (what evaluate/predict load)
    summary.json   final figures

Randomness is re-seeded from (seed, epoch) at every epoch start, and its state is saved with a
mid-epoch checkpoint, so a resumed run on the CPU ends with the same numbers as an uninterrupted
one.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cifarlab import __version__, checkpoint, fsio
from cifarlab.data import Split, load_dataset, make_splits
from cifarlab.errors import Interrupted, TrainingError, UserError
from cifarlab.evaluate import evaluate_split, to_batch
from cifarlab.models import Classifier, create_model
from cifarlab.recipes import TrainConfig, lr_at, validate

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "train_acc_clean", "val_loss", "val_acc",
                  "lr", "seconds", "train_seconds"]


def available_cores() -> int:
    """Threads to use: $CIFARLAB_THREADS, else the cores this process may run on.

    More threads than free cores is far worse than fewer: OpenMP threads spin-wait for each
    other, and two 2-thread trainings on 2 cores each run ~10x slower. Set CIFARLAB_THREADS=1
    for a second job running beside a first.
    """
    env = os.environ.get("CIFARLAB_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(name)


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


def seed_for(seed: int, epoch: int, stream: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, random stream)."""
    return (seed * 1_000_003 + epoch * 101 + stream) % (2**63)


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
    rng: dict[str, Any] = field(default_factory=dict)


class _StopFlag:
    """SIGINT sets a flag that the loop checks between steps: a checkpoint is never half-updated.

    A second Ctrl-C stops at once (Python's default behaviour).
    """

    def __init__(self) -> None:
        self.stop = False
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
        print("\ncifarlab: stopping after this step and saving a checkpoint "
              "(Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        # Keras' Adam defaults (eps=1e-7): the seed recipes reproduce Keras notebooks.
        return torch.optim.Adam(model.parameters(), lr=config.lr, eps=1e-7,
                                weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           nesterov=True, weight_decay=config.weight_decay)


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
    """Owns one run: its data, model, optimizer and run directory."""

    def __init__(self, config: TrainConfig, run_dir: Path, quiet: bool = False):
        validate(config)
        self.config, self.run_dir, self.quiet = config, run_dir, quiet
        self.device = pick_device(config.device)
        torch.set_num_threads(available_cores())
        dataset = load_dataset(config.data, quiet=quiet)
        config.data = str(dataset.source)
        self.classes = dataset.classes
        splits = make_splits(dataset, config.val_fraction, config.split_seed)
        if "val" not in splits:
            raise UserError("--val-fraction 0 leaves no validation images; use e.g. 0.1")
        train = splits["train"]
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
        self.optimizer = _optimizer(config, self.model)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.epoch_state = EpochState()
        self.steps_per_epoch = math.ceil(len(train) / config.batch_size)

    # --------------------------------------------------------------------------------------
    # Checkpoints

    def _checkpoint(self, epoch: int, state: EpochState) -> dict[str, Any]:
        return {
            "format": checkpoint.CHECKPOINT_FORMAT, "version": 1,
            "config": self.config.to_dict(), "classes": self.classes,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": epoch, "history": self.history,
            "epoch_state": {"step": state.step, "loss_sum": state.loss_sum,
                            "correct": state.correct, "seen": state.seen,
                            "seconds": state.seconds, "rng": state.rng},
        }

    def save_checkpoint(self, epoch: int, state: EpochState) -> None:
        checkpoint.save(self.run_dir / checkpoint.CHECKPOINT_FILE, self._checkpoint(epoch, state))

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.history = list(saved["history"])
        self.start_epoch = int(saved["epoch"])
        es = saved["epoch_state"]
        self.epoch_state = EpochState(int(es["step"]), float(es["loss_sum"]), int(es["correct"]),
                                      int(es["seen"]), float(es["seconds"]), dict(es["rng"]))

    # --------------------------------------------------------------------------------------
    # The loop

    def write_config(self) -> None:
        record = {"config": self.config.to_dict(), "classes": self.classes,
                  "train_images": len(self.train_split), "val_images": len(self.val_split),
                  "device": str(self.device), "threads": torch.get_num_threads(),
                  "versions": versions(), "command": " ".join(sys.argv)}
        fsio.write_json(self.run_dir / "config.json", record)

    def fit(self) -> dict[str, Any]:
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self._print_header()
        with _StopFlag() as flag:
            for epoch in range(self.start_epoch, config.epochs):
                state = self.epoch_state if epoch == self.start_epoch else EpochState()
                row = self._train_epoch(epoch, state, flag)
                self.history.append(row)
                self.save_checkpoint(epoch + 1, EpochState())
                fsio.write_text(self.run_dir / "metrics.csv", _metrics_csv(self.history))
                self._print_row(row)
                if flag.stop and epoch + 1 < config.epochs:
                    raise Interrupted(self.run_dir)
        summary = self.summary()
        checkpoint.save(self.run_dir / checkpoint.MODEL_FILE, checkpoint.model_record(
            self.model, config.model, self.classes, config.to_dict(), summary))
        fsio.write_json(self.run_dir / "summary.json", summary)
        return summary

    def _train_epoch(self, epoch: int, state: EpochState, flag: _StopFlag) -> dict[str, Any]:
        config, model = self.config, self.model
        n, steps = len(self.train_split), self.steps_per_epoch
        order = torch.randperm(n, generator=torch.Generator().manual_seed(
            seed_for(config.seed, epoch, 0))).to(self.device)
        aug_gen = torch.Generator().manual_seed(seed_for(config.seed, epoch, 1))
        torch.manual_seed(seed_for(config.seed, epoch, 2))  # dropout
        if state.rng:  # continuing an interrupted epoch: restore the streams exactly
            aug_gen.set_state(state.rng["augment"])
            torch.set_rng_state(state.rng["torch"])
        model.train()
        started = time.perf_counter() - state.seconds
        bar = tqdm(total=steps, initial=state.step, desc=f"epoch {epoch + 1}/{config.epochs}",
                   unit="step", leave=False, disable=self.quiet, file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5)
        use_amp = self.device.type == "cuda"
        with bar:
            for step in range(state.step, steps):
                idx = order[step * config.batch_size:(step + 1) * config.batch_size]
                if len(idx) < 2:  # a batch of one breaks BatchNorm; it is one image in 50,000
                    continue
                images = to_batch(self.train_images[idx], self.device)
                labels = self.train_labels[idx]
                if config.augment.active:
                    images = config.augment(images, aug_gen)
                lr = lr_at(config, (epoch * steps + step) / (config.epochs * steps))
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = model(images)
                    loss = F.cross_entropy(logits.float(), labels,
                                           label_smoothing=config.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; the last "
                        f"good checkpoint (end of epoch {epoch}) is in {self.run_dir}. "
                        "Try a lower --lr.")
                state.loss_sum += loss_value * len(idx)
                state.correct += int((logits.argmax(1) == labels).sum())
                state.seen += len(idx)
                state.step = step + 1
                bar.update(1)
                if step % 20 == 0 or step + 1 == steps:
                    bar.set_postfix(loss=f"{state.loss_sum / state.seen:.4f}",
                                    acc=f"{state.correct / state.seen:.4f}", refresh=False)
                if flag.stop and step + 1 < steps:
                    state.seconds = time.perf_counter() - started
                    state.rng = {"augment": aug_gen.get_state(), "torch": torch.get_rng_state()}
                    self.save_checkpoint(epoch, state)
                    raise Interrupted(self.run_dir)
        train_seconds = time.perf_counter() - started
        clean = evaluate_split(model, self.clean_split, self.device)
        val = evaluate_split(model, self.val_split, self.device)
        return {
            "epoch": epoch + 1,
            "train_loss": state.loss_sum / max(1, state.seen),
            "train_acc": state.correct / max(1, state.seen),
            "train_acc_clean": clean["accuracy"],
            "val_loss": val["loss"], "val_acc": val["accuracy"], "lr": lr_at(
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
        }

    # --------------------------------------------------------------------------------------
    # Console output: one fixed-width row per epoch

    def _print_header(self) -> None:
        if self.quiet:
            return
        c = self.config
        print(f"recipe {c.recipe} (model {c.model}): {len(self.train_split)} train / "
              f"{len(self.val_split)} val images, {c.epochs} epochs of {self.steps_per_epoch} "
              f"steps, batch {c.batch_size}, {self.device} x{torch.get_num_threads()} threads")
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


def train(config: TrainConfig, out: Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train a new run; returns its summary. The Python form of `cifarlab train`."""
    run_dir = out or new_run_dir(config.recipe)
    if (run_dir / checkpoint.CHECKPOINT_FILE).exists():
        raise UserError(f"{run_dir} already holds a run; use --resume, or another --out")
    trainer = Trainer(config, run_dir, quiet=quiet)
    return trainer.fit()


def resume(run_dir: Path, quiet: bool = False, device: str | None = None) -> dict[str, Any]:
    """Continue an interrupted run from its checkpoint to the same final state."""
    saved = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE, checkpoint.CHECKPOINT_FORMAT)
    config = TrainConfig.from_dict(saved["config"])
    if device is not None:
        config.device = device
    if int(saved["epoch"]) >= config.epochs and (run_dir / checkpoint.MODEL_FILE).exists():
        raise UserError(f"{run_dir} is already complete ({config.epochs} epochs)")
    trainer = Trainer(config, run_dir, quiet=quiet)
    trainer.restore(saved)
    if not quiet:
        state = trainer.epoch_state
        print(f"resuming {run_dir} at epoch {trainer.start_epoch + 1}, step {state.step + 1}")
    return trainer.fit()


def latest_run(root: Path = Path("runs")) -> Path:
    runs = sorted((p for p in root.glob("*") if (p / checkpoint.CHECKPOINT_FILE).exists()),
                  key=lambda p: (p / checkpoint.CHECKPOINT_FILE).stat().st_mtime)
    if not runs:
        raise UserError(f"no run to resume in {root}/; pass the run directory: --resume DIR")
    return runs[-1]
