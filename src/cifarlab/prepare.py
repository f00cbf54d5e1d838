"""The pieces a run is built from, in order: its data (splits carved once), then its model.

The trainer, the lr finder and the budget's speed probe build their runs from these same pieces,
so a run, its lr test and its budget plan see the same images and the same network.

    >>> from cifarlab.prepare import mean_std
    >>> import numpy as np
    >>> mean_std(np.zeros((4, 32, 32, 3), np.uint8))[0]
    [0.0, 0.0, 0.0]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarlab import distributed
from cifarlab.checkpoint import ModelArg
from cifarlab.config import TrainConfig, low_res_epochs
from cifarlab.data import Dataset, Split, load_dataset, make_splits
from cifarlab.errors import UserError
from cifarlab.networks import Classifier, create_model
from cifarlab.runtime import to_batch

STATS_IMAGES = 10_000  # mean and std from up to this many images: exact to ~0.1 of a pixel level
INIT_IMAGES = 5_000  # init_from_data (FastNet's whitening filters) sees this many images:
# airbench's own number, enough for stable 2x2 patch covariances, and ~0.1 s on the CPU


@dataclass(frozen=True)
class Data:
    """The splits a run trains and validates on (uint8 NHWC arrays in memory)."""

    classes: list[str]
    source: Path
    train: Split
    val: Split
    clean: Split  # a fixed sample of train, measured in eval mode each epoch


def sample(split: Split, size: int, seed: int) -> Split:
    """A fixed random subset of `size` images (all of them if the split is smaller)."""
    if size >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:size])
    return Split(split.images[idx], split.labels[idx])


def read_dataset(config: TrainConfig, ctx: distributed.Context, device: torch.device,
                 quiet: bool, given: Dataset | None = None) -> Dataset:
    """Decode (or read the cache of) config.data; or the Dataset `given` in memory (arrays.py),
    which must be the one config.data names (its fingerprint).

    Under torchrun, local rank 0 of each machine decodes the data and fills the cache; the other
    processes then read the cache. The all-reduce between is a barrier that also tells them
    whether the load failed, so that they stop quietly with rank 0 instead of waiting for it.
    """
    if given is not None:
        if str(given.source) != config.data:
            raise UserError(f"these images are not the ones the run trained on ({config.data}); "
                            f"their fingerprint is {given.source}")
        return given
    if not ctx.enabled:
        return load_dataset(config.data, quiet=quiet)
    dataset, error = None, None
    if ctx.local_rank == 0:
        try:
            dataset = load_dataset(config.data, quiet=quiet)
        except UserError as exc:
            error = exc
    if distributed.all_sum([error is not None], device)[0]:
        raise error or UserError("another process could not load the data")
    return dataset or load_dataset(config.data, quiet=True)


def train_split(dataset: Dataset, config: TrainConfig) -> tuple[Split, Split]:
    """(train, val) as the config carves them from the source, before any subset."""
    splits = make_splits(dataset, config.val_fraction, config.split_seed)
    if "train" not in splits:
        raise UserError(f"{dataset.source} holds only a test split: it can evaluate a model "
                        "(cifarlab evaluate RUN --data SRC --split test), not train one")
    train = splits["train"]
    # --val-fraction 0: the final fit on every training image, with no validation at all.
    return train, splits.get("val", Split(train.images[:0], train.labels[:0]))


def carve(dataset: Dataset, config: TrainConfig) -> Data:
    """The run's splits: train (a seeded random `subset` of it, applied here and only here: train
    is ordered by class), val, and the clean-train sample."""
    train, val = train_split(dataset, config)
    if config.subset is not None:
        train = sample(train, config.subset, config.split_seed)
    return Data(dataset.classes, dataset.source, train, val,
                sample(train, config.clean_train_size, config.split_seed + 1))


def mean_std(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 HWC images, in pixel units (0..255).

    From each channel's histogram of (up to) STATS_IMAGES images: exact, and ~10x faster than
    numpy's std over a float copy (1.4 s of every run's start before).
    """
    picked = images[:: max(1, len(images) // STATS_IMAGES)].reshape(-1, 3)
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for channel in range(3):
        counts = np.bincount(picked[:, channel], minlength=256).astype(np.float64)
        mean = float(counts @ values / counts.sum())
        means.append(mean)
        stds.append(max(float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum())), 1e-3))
    return means, stds


def build_model(config: TrainConfig, data: Data, device: torch.device,
                model: ModelArg = None) -> Classifier:
    """The network (config.model, or `model` from Python), wrapped with the data's normalisation,
    on the device, and initialised from the data if it asks to be (`init_from_data`)."""
    torch.manual_seed(config.seed)
    mean, std = mean_std(data.train.images)
    classifier = create_model(model if model is not None else config.model, len(data.classes),
                              mean, std, config.model_kwargs)
    check_output(classifier, len(data.classes))
    if low_res_epochs(config):
        check_output(classifier, len(data.classes), config.low_res)
    classifier.to(device)
    if config.channels_last:
        classifier.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    init = getattr(classifier.body, "init_from_data", None)
    if callable(init):
        picked = sample(data.train, INIT_IMAGES, config.seed)
        with torch.no_grad():
            init(classifier.normalize(to_batch(picked.images, device)))
    return classifier


def check_output(model: Classifier, num_classes: int, side: int = 32) -> None:
    """A user's model must map N x 3 x side x side to N x classes: say so before training starts."""
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            out = model(torch.zeros(2, 3, side, side))
            model.train(was)
    except Exception as exc:  # the user's forward failed: one line, with the cause
        hint = (" (low_res_share trains the first epochs at this size; a model with a fixed-size "
                "head, such as the classic Keras CNNs, cannot)" if side != 32 else "")
        raise UserError(f"the model fails on a batch of 2 x 3 x {side} x {side} images{hint}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"the model must return logits of shape (N, {num_classes}) for "
                        f"{num_classes} classes; it returned {shape}")


def with_source(config: TrainConfig, data: Data) -> TrainConfig:
    """The config with its data source resolved to the path that was read."""
    return dataclasses.replace(config, data=str(data.source))
