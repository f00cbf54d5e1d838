"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates"; fastai's lr_find).

Train for ~100 steps while the lr grows exponentially from 1e-7 to 10, and watch the loss: it
stays flat while the lr is too small to matter, falls once the lr is useful, and explodes when the
lr is too large. The test stops when the loss, averaged over the last steps, passes 4x its best.

    cifarlab lr-find --recipe base --data ../shared/data/cifar10-train-jpeg.tgz
    cifarlab lr-find --model my_net.py:MyNet --set optimizer=sgd --out lr-test   # + figure, CSV, JSON

    >>> import cifarlab as cl
    >>> found = cl.lr_find("base", data="../shared/data/cifar10-train-jpeg.tgz")   # doctest: +SKIP
    >>> found.suggestion, found.plot()                                           # doctest: +SKIP

The suggestion is the lr at the minimum of the smoothed loss, divided by 10: the minimum is where
the lr already starts to hurt, and a tenth of it is still on the falling part of the curve. We
chose it over the steepest descent (also reported) because the steepest point of a 100-step test
wanders with the noise of single batches and sits at the very start of the descent, while the
minimum of the smoothed curve is stable (docs/search.md has the base recipe's curve).

It trains a copy (your module keeps its weights), uses the same pieces as training (data, model,
optimizer with its parameter groups, batched augmentation), and leaves nothing behind: no run
directory unless `out` is given, and the global random state and thread count as they were.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from cifarlab import distributed, fsio, optim
from cifarlab.augment import augment_batch
from cifarlab.config import TrainConfig, resolve
from cifarlab.errors import UserError
from cifarlab.networks import spec_of
from cifarlab.prepare import Data, build_model, carve, read_dataset
from cifarlab.runtime import available_cores, generator, pick_device, to_batch
from cifarlab.step import train_step

FIGURE, TABLE, RESULT = "lr_find.png", "lr_find.csv", "lr_find.json"
SKIP_START = 0.1  # the first 10% of steps: a fresh model's loss moves for reasons other than the lr


@dataclass
class LRFind:
    """The range test's curve and what it suggests; `plot()` draws it, `save(out)` writes it."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]  # a centred moving average: no lag, unlike the running average
    suggestion: float  # minimum / 10
    minimum: float  # lr at the smallest smoothed loss
    steepest: float  # lr where the smoothed loss falls fastest (per decade of lr)
    stopped: str  # why the test ended
    config: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"LRFind(suggestion {self.suggestion:.2g} = minimum {self.minimum:.2g} / 10; "
                f"steepest {self.steepest:.2g}; {len(self.lrs)} steps, {self.stopped})")

    def to_dict(self) -> dict[str, Any]:
        return {"suggestion": self.suggestion, "minimum": self.minimum, "steepest": self.steepest,
                "rule": "minimum / 10", "steps": len(self.lrs), "stopped": self.stopped,
                "recipe": self.config.get("recipe"), "model": self.config.get("model"),
                "optimizer": self.config.get("optimizer"), "batch_size": self.config.get("batch_size")}

    def plot(self) -> Figure:
        """Loss against lr on a log axis: raw (faint), smoothed, and the three marked lrs."""
        from matplotlib.ticker import LogLocator

        from cifarlab.plots import LabFigure

        fig = LabFigure(figsize=(8, 4.8), layout="constrained")
        ax = fig.subplots()
        ax.plot(self.lrs, self.losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss per step")
        ax.plot(self.lrs, self.smoothed, color="tab:blue", linewidth=2, label="smoothed")
        for lr, color, text in ((self.suggestion, "tab:green", "suggested (minimum / 10)"),
                                (self.steepest, "tab:purple", "steepest descent"),
                                (self.minimum, "tab:red", "minimum")):
            ax.axvline(lr, color=color, linestyle="--", label=f"{text}: {lr:.2g}")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10))
        start = self.smoothed[0] if self.smoothed else 1.0
        low = min(self.smoothed) if self.smoothed else 0.0
        ax.set_ylim(low - 0.1 * (start - low + 1e-3), start + 0.6 * (start - low + 1e-3))
        ax.set(title=f"Learning-rate range test: {self.config.get('recipe')} "
                     f"({self.config.get('optimizer')}, batch {self.config.get('batch_size')})",
               xlabel="learning rate (log scale)", ylabel="training loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper left", fontsize=9)
        return fig

    def save(self, out: str | Path) -> Path:
        """lr_find.png, lr_find.csv (lr, loss, smoothed) and lr_find.json into folder `out`."""
        from cifarlab.plots import to_png

        out = Path(out)
        fsio.make_dir(out)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["lr", "loss", "smoothed"])
        writer.writerows([f"{a:.6g}", f"{b:.6g}", f"{c:.6g}"]
                         for a, b, c in zip(self.lrs, self.losses, self.smoothed, strict=True))
        fsio.write_text(out / TABLE, buffer.getvalue())
        fsio.write_json(out / RESULT, self.to_dict())
        fsio.write_bytes(out / FIGURE, to_png(self.plot()))
        return out


@contextmanager
def _leave_global_state() -> Iterator[None]:
    """Whatever the test seeds or sets, the caller's random state and thread count come back."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def lr_find(recipe: str | None = None, *, model: Any = None, data: str | Path | None = None,
            config_file: str | Path | None = None, start: float = 1e-7, end: float = 10.0,
            steps: int = 100, diverge: float = 4.0, beta: float = 0.9,
            out: str | Path | None = None, quiet: bool = False, **settings: Any) -> LRFind:
    """The LR range test for a recipe or your own model (`cl.lr_find`).

    `model`, `data`, `config_file` and other keywords (`optimizer="sgd"`, `batch_size=128`) work
    as in `cl.train`; the optimizer and its parameter groups are the run's own. `steps` steps
    from `start` to `end` (exponentially); stops early when the running loss (an exponential
    average with weight `beta`, bias-corrected) passes `diverge` x its best. The curve and the
    suggestion use a centred moving average instead: a running average lags by ~1/(1-beta) steps,
    which at 12 steps a decade would shift every lr it points at by a decade or more (beta 0.98,
    fastai's, by four). `out`: also write the figure, CSV and JSON there.
    """
    if not 0 < start < end:
        raise UserError(f"lr-find needs 0 < --start < --end, got {start:g} and {end:g}")
    if steps < 10:
        raise UserError("lr-find needs at least 10 --steps")
    if diverge <= 1:
        raise UserError("--diverge must be above 1 (a multiple of the best loss)")
    if not 0 <= beta < 1:
        raise UserError("beta must be in [0, 1)")
    ctx = distributed.from_env()
    if ctx.enabled:
        raise UserError("lr-find runs in one process; start it without torchrun")
    if data is not None:
        settings["data"] = str(data)
    if model is not None:
        settings["model"] = model if isinstance(model, str) else spec_of(model)
    config = resolve(recipe, config_file, settings)
    user_model = copy.deepcopy(model) if isinstance(model, nn.Module) else (
        None if isinstance(model, str) else model)
    with _leave_global_state():
        torch.set_num_threads(available_cores())
        device = pick_device(config.device)
        dataset = carve(read_dataset(config, ctx, device, quiet), config)
        net = build_model(config, dataset, device, user_model)
        result = _range_test(config, dataset, net, device, start, end, steps, diverge, beta)
    result.config = dataclasses.replace(config, data=str(dataset.source)).to_dict()
    if out is not None:
        result.save(out)
    return result


def _range_test(config: TrainConfig, data: Data, net: nn.Module, device: torch.device,
                start: float, end: float, steps: int, diverge: float, beta: float) -> LRFind:
    optimizer = optim.build(config, net)
    images = torch.from_numpy(data.train.images)
    labels = torch.from_numpy(data.train.labels)
    batch = min(config.batch_size, len(images))
    order_gen, augment_gen = generator(config.seed, 7), generator(config.seed, 8)
    order, position = torch.randperm(len(images), generator=order_gen), 0
    net.train()
    lrs, losses = [], []
    average, best, stopped = 0.0, math.inf, f"reached lr {end:g}"
    for step in range(steps):
        lr = start * (end / start) ** (step / (steps - 1))
        if position + batch > len(images):  # a new epoch: a new order
            order, position = torch.randperm(len(images), generator=order_gen), 0
        idx = order[position:position + batch]
        position += batch
        x = to_batch(images[idx], device)
        if config.augment.active:
            x = augment_batch(config.augment, x, augment_gen)
        optim.set_lr(optimizer, lr, 0)
        loss, _ = train_step(net, optimizer, x, labels[idx].to(device), config)
        value = float(loss)
        if not math.isfinite(value):
            stopped = f"loss became {value} at lr {lr:.2g}"
            break
        average = beta * average + (1 - beta) * value
        debiased = average / (1 - beta ** (step + 1))
        lrs.append(lr)
        losses.append(value)
        best = min(best, debiased)
        if debiased > diverge * best:
            stopped = f"loss diverged (over {diverge:g}x its best) at lr {lr:.2g}"
            break
    if len(lrs) < 5:
        raise UserError(f"the lr range test stopped after {len(lrs)} steps ({stopped}); "
                        "lower --start")
    smoothed = _smooth(losses, window=max(5, steps // 12) | 1)
    minimum, steepest = _pick(lrs, smoothed)
    return LRFind(lrs, losses, smoothed, minimum / 10, minimum, steepest, stopped)


def _smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average (edges padded with the end values): the noise of single batches
    goes, the position of the minimum stays."""
    half = window // 2
    padded = np.pad(np.asarray(values, dtype=np.float64), half, mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid").tolist()


def _pick(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(lr at the minimum of the smoothed loss, lr of its steepest fall before the minimum),
    ignoring the first 10% of steps."""
    skip = max(1, int(len(lrs) * SKIP_START))
    loss = np.asarray(smoothed)
    low = skip + int(np.argmin(loss[skip:]))
    slope = np.gradient(loss, np.log10(np.asarray(lrs)))
    window = slope[skip:low + 1]
    steep = skip + int(np.argmin(window)) if len(window) else low
    return lrs[low], lrs[steep]
