"""`--budget`: size a run so that training plus evaluation ends within a wall-clock budget.

The speed of a fixed network does not depend on the pixels, so a throwaway copy of the model is
timed on random data for a few full-size steps and one evaluation batch. From those rates:

    epochs = (budget - time already spent - final TTA pass) / (train epoch + its evaluation)

rounded down, so a run lands under its budget by up to one epoch plus the noise of the
measurement. Too short a budget for one epoch trains one epoch on a random subset that fits.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab import optim
from cifarlab.augment import augment_batch
from cifarlab.config import TrainConfig, low_res_epochs
from cifarlab.errors import UserError
from cifarlab.networks import create_model
from cifarlab.text import plural

_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}
SAFETY = 0.97  # plan for 97% of the budget: timings on shared machines wander


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"cannot read the budget '{text}': use e.g. 90s, 10m or 1h")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def measure_rates(config: TrainConfig, device: torch.device, num_classes: int,
                  steps: int = 5, warmup: int = 1,
                  make_model: Callable[[], nn.Module] | None = None) -> tuple[float, float]:
    """(seconds per training step at the run's batch size, seconds per evaluated image).

    The model is a throwaway copy (`make_model`, else config.model with a generic
    normalisation). The first `warmup` steps pay one-off allocation and are not counted.
    """
    torch.manual_seed(config.seed)
    if make_model is not None:
        model = make_model().to(device)
    else:
        model = create_model(config.model, num_classes, (127.0,) * 3, (64.0,) * 3,
                             config.model_kwargs).to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = optim.build(config, model)  # the same optimizer: its update costs time too
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (config.batch_size, 3, 32, 32), generator=gen).float()
    images = images.to(device).contiguous(memory_format=torch.channels_last if config.channels_last
                                           else torch.contiguous_format)
    labels = torch.randint(0, num_classes, (config.batch_size,), generator=gen).to(device)
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        x = augment_batch(config.augment, images, gen) if config.augment.active else images
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss.detach())  # waits for the device
        times.append(time.perf_counter() - start)
    model.eval()
    with torch.inference_mode():
        batch = images[:256]  # the batch size evaluation uses
        model(batch)
        start = time.perf_counter()
        float(model(batch).sum())
        per_image = (time.perf_counter() - start) / len(batch)
    return sum(times[warmup:]) / steps, per_image


def fit(config: TrainConfig, n_train: int, n_val: int, num_classes: int, device: torch.device,
        make_model: Callable[[], nn.Module] | None, spent: float, quiet: bool = False) -> TrainConfig:
    """A copy of `config` whose epochs (and subset, if one epoch is too long) fit config.budget,
    with at most config.max_epochs epochs."""
    assert config.budget is not None
    probe_started = time.perf_counter()
    step_seconds, image_seconds = measure_rates(config, device, num_classes, make_model=make_model)
    spent += time.perf_counter() - probe_started
    eval_seconds = (min(config.clean_train_size, n_train) + n_val) * image_seconds
    final_seconds = (6 * n_val * image_seconds if config.tta else 0.0) + 2.0  # + saving
    # + about 0.3 s an epoch for the checkpoint and metrics writes
    epoch_seconds = math.ceil(n_train / config.batch_size) * step_seconds + eval_seconds + 0.3
    left = config.budget * SAFETY - spent - final_seconds
    # Low-resolution epochs cost (low_res / 32)^2 of a step (fastnet_small at 24 px: 0.56
    # measured, 0.5625 predicted); the share of them grows with the epochs chosen.
    cheaper = (1 - (config.low_res / 32) ** 2) * math.ceil(n_train / config.batch_size) * step_seconds

    def seconds(epochs: int) -> float:
        return epochs * epoch_seconds - low_res_epochs(config, epochs) * cheaper

    epochs = 0
    while epochs < (config.max_epochs or 1000) and seconds(epochs + 1) <= left:
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
              f"{1 / image_seconds:.0f} images/s evaluated -> {plural(epochs, 'epoch')}"
              + (f" of {subset} images" if subset else "")
              + f" of ~{epoch_seconds:.0f} s"
              + (f" ({low} of them at {config.low_res} px)" if low else ""),
              file=sys.stderr, flush=True)
    return dataclasses.replace(config, epochs=epochs, subset=subset)
