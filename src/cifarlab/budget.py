"""`--budget`: size a run so that training plus evaluation ends within a wall-clock budget.

The speed of a fixed network does not depend on the pixels, so a throwaway copy of the model is
timed on random data for a few full-size steps of `step.train_step` (the step training runs,
autocast and label smoothing included) and one evaluation batch. From those rates:

    epochs = (budget - time already spent - final TTA pass) / (train epoch + its evaluation)

rounded down, so a run lands under its budget by up to one epoch plus the noise of the
measurement. Too short a budget for one epoch trains one epoch on a random subset that fits.
How `budget` and `epochs` combine is config.py's rule (with a budget, `epochs` is a cap).
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
from cifarlab.augment import augment_batch
from cifarlab.config import TrainConfig, low_res_epochs
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
    model.train()
    times = []
    for _ in range(PROBE_WARMUP + PROBE_STEPS):
        start = time.perf_counter()
        x = augment_batch(config.augment, images, gen) if config.augment.active else images
        loss, _ = train_step(model, optimizer, x, labels, config)
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


def fit(config: TrainConfig, data: Data, device: torch.device,
        make_model: Callable[[], nn.Module], spent: float, quiet: bool = False) -> TrainConfig:
    """A copy of `config` whose epochs (and subset, if one epoch is too long) fit config.budget,
    with at most config.max_epochs epochs."""
    assert config.budget is not None
    n_train, n_val = len(data.train), len(data.val)
    probe_started = time.perf_counter()
    step_seconds, image_seconds = measure_rates(config, device, len(data.classes), make_model,
                                                n_train)
    spent += time.perf_counter() - probe_started
    steps = math.ceil(n_train / config.batch_size)
    eval_seconds = (len(data.clean) + n_val) * image_seconds
    tta = tta_views(config.tta_fraction) * n_val * image_seconds if config.tta else 0.0
    epoch_seconds = steps * step_seconds + eval_seconds + EPOCH_WRITE_SECONDS
    left = config.budget * SAFETY - spent - tta - SAVE_SECONDS
    # Low-resolution epochs cost (low_res / 32)^2 of a step (fastnet_small at 24 px: 0.56
    # measured, 0.5625 predicted); the share of them grows with the epochs chosen.
    cheaper = (1 - (config.low_res / 32) ** 2) * steps * step_seconds

    def seconds(epochs: int) -> float:
        return epochs * epoch_seconds - low_res_epochs(config, epochs) * cheaper

    epochs = 0
    while epochs < (config.max_epochs or MAX_EPOCHS) and seconds(epochs + 1) <= left:
        epochs += 1
    subset = config.subset
    if epochs < 1:
        images = int((left - eval_seconds) / step_seconds) * config.batch_size
        if images < config.batch_size:
            raise UserError(
                f"a budget of {config.budget:.0f} s is too short for recipe '{config.recipe}' here: "
                f"one step takes {step_seconds:.1f} s and evaluation {eval_seconds:.0f} s")
        epochs, subset = 1, images
    if not quiet:
        low = low_res_epochs(config, epochs)
        print(f"budget {config.budget:.0f} s: {step_seconds:.2f} s/step, "
              f"{1 / image_seconds:.0f} images/s evaluated -> {epochs} "
              f"{'epoch' if epochs == 1 else 'epochs'}"
              + (f" of {subset} images" if subset else "")
              + f" of ~{epoch_seconds:.0f} s"
              + (f" ({low} of them at {config.low_res} px)" if low else ""),
              file=sys.stderr, flush=True)
    return dataclasses.replace(config, epochs=epochs, subset=subset)
