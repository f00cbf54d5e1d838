"""`--budget`: size a run so that training plus evaluation fills a wall-clock budget.

The speed of a fixed network does not depend on the pixels, so a throwaway copy of the model is
timed on random data for a few full-size steps of `step.train_step` (the step training runs,
autocast and label smoothing included) and one evaluation batch. From those rates `plan` finds
the most training that fits in what is left of the budget (SAFETY of it, less the time already
spent): whole epochs and then a last one cut short (`last_epoch_share`), so a run fills its
budget up to the noise of the measurement; every evaluation `eval_every` asks for, and the final
TTA views, are counted. Too short a budget for one epoch trains one epoch on a random subset
that fits. How `budget` and `epochs` combine is config.py's rule (with a budget, `epochs` is a
cap).

With `budget_min_epochs`, a fastnet recipe's net is the budget's choice too: the widest of
`WIDTHS` that trains at least that many epochs in the time (each width probed, narrowest first).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from cifarlab import optim
from cifarlab.augment import augment_batch, mix_batch
from cifarlab.config import TrainConfig, evaluates, low_res_epochs
from cifarlab.errors import UserError
from cifarlab.evaluate import EVAL_BATCH, tta_views
from cifarlab.prepare import Data
from cifarlab.step import train_step

SAFETY = 0.97  # plan for 97% of the budget: timings on shared machines wander
MAX_EPOCHS = 1000  # with no `epochs` cap, the most a budget may plan (a bound, not a target)
SAVE_SECONDS = 2.0  # writing model.pt, best.pt's calibration and summary.json at the end
EPOCH_WRITE_SECONDS = 0.3  # checkpoint.pt and metrics.csv after every epoch
PROBE_STEPS, PROBE_WARMUP = 5, 1  # timed steps; the first pays one-off allocation, not counted


def measure_rates(config: TrainConfig, device: torch.device, num_classes: int,
                  make_model: Callable[[], nn.Module], n_train: int) -> tuple[float, float]:
    """(seconds per training step at the run's batch size, seconds per evaluated image).

    The batch is the run's own: `batch_size`, but never more images than the run has (a step
    cannot hold more), so the probe's memory is bounded by the data as training's is.
    """
    torch.manual_seed(config.seed)
    model = make_model().to(device)
    optimizer = optim.build(config, model)  # the same optimizer: its update costs time too
    batch = max(2, min(config.batch_size, n_train))
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 32, 32), generator=gen).float()
    images = images.to(device).contiguous(memory_format=torch.channels_last if config.channels_last
                                          else torch.contiguous_format)
    labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    weights = torch.ones(num_classes, device=device) if config.class_weight is not None else None
    model.train()
    times = []
    for _ in range(PROBE_WARMUP + PROBE_STEPS):
        start = time.perf_counter()
        x = augment_batch(config.augment, images, gen) if config.augment.active else images
        targets = labels
        if config.augment.mixes_labels:
            x, targets = mix_batch(config.augment, x, labels, num_classes, gen)
        loss, _ = train_step(model, optimizer, x, targets, config, class_weights=weights)
        float(loss)  # waits for the device
        times.append(time.perf_counter() - start)
    model.eval()
    with torch.inference_mode():
        probe = images[:EVAL_BATCH]
        model(probe)
        start = time.perf_counter()
        float(model(probe).sum())
        per_image = (time.perf_counter() - start) / len(probe)
    return sum(times[PROBE_WARMUP:]) / PROBE_STEPS, per_image


# --budget's net for fastnet recipes with budget_min_epochs: the widest of these that trains
# that many epochs in the time (narrowest first; fastnet_small's widths, airbench93's, and up to
# fast's). A wider net learns more an epoch, more epochs learn more too: BENCHMARKS.md, round 3.
WIDTHS = ((32, 128, 128), (64, 128, 128), (64, 192, 192), (64, 256, 256))
WIDTH_MODELS = ("fastnet", "fastnet_small")
MIN_SHARE = 0.1  # a last epoch shorter than this share of one is left out


@dataclasses.dataclass(frozen=True)
class Plan:
    """What fits: `epochs`, the last of them cut to `share` of its steps, in `seconds`."""

    epochs: int
    share: float
    seconds: float

    @property
    def span(self) -> float:
        """Epochs of training, the last one counted by its share."""
        return self.epochs - 1 + self.share


def plan(config: TrainConfig, data: Data, step_seconds: float, image_seconds: float,
         left: float) -> Plan | None:
    """The most training that fits in `left` seconds at these rates, or None if one epoch does not.

    Counted: every epoch's steps (low-res ones at their cost) and writes; the evaluations
    `eval_every` asks for (clean sample + val), the last epoch's always; after training, the TTA
    views beyond that last evaluation's plain pass, and a calibration of best.pt when it may hold
    an earlier epoch than the final one.
    """
    steps = math.ceil(len(data.train) / config.batch_size)
    train_epoch = steps * step_seconds
    low_cost = (config.low_res / 32) ** 2 * train_epoch
    evaluation = (len(data.clean) + len(data.val)) * image_seconds
    after = SAVE_SECONDS
    if config.tta and len(data.val):
        after += (tta_views(config.tta_fraction) - 1) * len(data.val) * image_seconds
    if config.calibrate and config.eval_every and len(data.val):
        after += len(data.val) * image_seconds

    def seconds(epochs: int, share: float) -> float:
        low = low_res_epochs(config, epochs)
        trained = sum((low_cost if e < low else train_epoch) * (share if e == epochs - 1 else 1.0)
                      for e in range(epochs))
        evaluations = sum(evaluates(config, e, epochs) for e in range(1, epochs + 1))
        return trained + evaluations * evaluation + epochs * EPOCH_WRITE_SECONDS + after

    cap = config.max_epochs or MAX_EPOCHS
    if seconds(1, 1.0) > left:
        return None
    epochs = 1
    while epochs < cap and seconds(epochs + 1, 1.0) <= left:
        epochs += 1
    best = Plan(epochs, 1.0, seconds(epochs, 1.0))
    if epochs < cap:  # one more epoch, cut to what time is left
        base = seconds(epochs + 1, 0.0)
        last = seconds(epochs + 1, 1.0) - base
        share = math.floor((left - base) / last * steps) / steps if last > 0 else 0.0
        if share >= MIN_SHARE:
            best = Plan(epochs + 1, share, seconds(epochs + 1, share))
    return best


def fit(config: TrainConfig, data: Data, device: torch.device,
        make_model: Callable[[TrainConfig], nn.Module], spent: float, quiet: bool = False,
        widths: bool = True) -> TrainConfig:
    """A copy of `config` that fills config.budget: its epochs, the last cut short to fill the
    time (last_epoch_share), at most config.max_epochs; a subset if one epoch is too long; and,
    with `budget_min_epochs` (and `widths`: the net can be rebuilt), the net's widths."""
    assert config.budget is not None
    budget = config.budget
    started = time.perf_counter()
    candidates = [config]
    if (widths and config.budget_min_epochs and config.model in WIDTH_MODELS
            and "widths" not in config.model_kwargs):
        candidates = [dataclasses.replace(config, model_kwargs={**config.model_kwargs, "widths": list(w)})
                      for w in WIDTHS]
    # enough epochs: budget_min_epochs, or all that the user allows (an epochs cap below it)
    enough = min(config.budget_min_epochs, config.max_epochs or MAX_EPOCHS)
    chosen: tuple[TrainConfig, Plan | None, float, float] | None = None
    notes = []
    for candidate in candidates:  # narrowest first: stop at the first that is too wide
        def build(probe: TrainConfig = candidate) -> nn.Module:
            return make_model(probe)

        step_seconds, image_seconds = measure_rates(candidate, device, len(data.classes), build,
                                                    len(data.train))
        left = budget * SAFETY - spent - (time.perf_counter() - started)
        fitted = plan(candidate, data, step_seconds, image_seconds, left)
        if len(candidates) > 1:
            notes.append(f"{_widths(candidate)}: {fitted.span if fitted else 0:.1f} epochs")
        if chosen is not None and (fitted is None or fitted.span < enough):
            break
        chosen = (candidate, fitted, step_seconds, image_seconds)
    assert chosen is not None
    config, fitted, step_seconds, image_seconds = chosen
    left = budget * SAFETY - spent - (time.perf_counter() - started)
    epochs, share, subset = (fitted.epochs, fitted.share, config.subset) if fitted else (1, 1.0, None)
    if fitted is None:  # not one epoch: one epoch of as many images as fit
        evaluation = (len(data.clean) + len(data.val)) * image_seconds
        steps = int((left - evaluation - SAVE_SECONDS - EPOCH_WRITE_SECONDS) / step_seconds)
        subset = steps * config.batch_size
        if subset < config.batch_size:
            raise UserError(
                f"a budget of {config.budget:.0f} s is too short for recipe '{config.recipe}' here: "
                f"one step takes {step_seconds:.1f} s and evaluation {evaluation:.0f} s")
    if not quiet:
        low = low_res_epochs(config, epochs)
        print(f"budget {config.budget:.0f} s: {step_seconds:.2f} s/step, "
              f"{1 / image_seconds:.0f} images/s evaluated -> {epochs} "
              f"{'epoch' if epochs == 1 else 'epochs'}"
              + (f" (the last {share:.0%} of one)" if share < 1 else "")
              + (f" of {subset} images" if subset else "")
              + (f" ({low} of them at {config.low_res} px)" if low else "")
              + (f" of widths {_widths(config)} (at least {config.budget_min_epochs} epochs: "
                 f"{', '.join(notes)})" if notes else ""),
              file=sys.stderr, flush=True)
    return dataclasses.replace(config, epochs=epochs, last_epoch_share=share, subset=subset)


def _widths(config: TrainConfig) -> str:
    return "/".join(str(w) for w in config.model_kwargs["widths"])
