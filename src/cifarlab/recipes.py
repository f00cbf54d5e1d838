"""Training configuration and the named recipes.

A recipe is a model plus the settings it trains with; `make_config` starts from a recipe and
applies overrides, rejecting unknown keys and wrong types (a typo must not be silently ignored).
The resolved `TrainConfig` is written to every run directory, so a run can be reproduced from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cifarlab.augment import Augment
from cifarlab.errors import UserError


@dataclass
class TrainConfig:
    recipe: str = "base"
    model: str = "base"
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"  # "adam" (Keras defaults) or "sgd" (Nesterov momentum)
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" or "onecycle" (linear warm-up, then linear decay)
    warmup: float = 0.0  # onecycle: fraction of training at which the peak lr is reached
    lr_start: float = 0.0  # onecycle: lr at the start, as a fraction of the peak
    lr_end: float = 0.0  # onecycle: lr at the end, as a fraction of the peak
    label_smoothing: float = 0.0
    bias_lr_scale: float = 1.0  # sgd: lr multiplier for BatchNorm shifts (their decay / the same)
    lookahead: bool = False  # pull the weights to an EMA of themselves every 5 steps (airbench)
    whiten_bias_epochs: int = 0  # models with a whitening layer: train its bias this long (0: always)
    augment: Augment = field(default_factory=Augment)
    alternate_flip: bool = False  # mirror each image in every other epoch, not at random
    tta: bool = False  # also report the final val accuracy with test-time augmentation
    budget: float | None = None  # seconds: `epochs` was sized to fit this wall-clock budget
    max_epochs: int | None = None  # with a budget: at most this many epochs
    data: str | None = None  # resolved data source path
    val_fraction: float = 0.1
    split_seed: int = 0  # fixes the validation images; independent of `seed`
    seed: int = 0  # fixes initialisation, shuffling, augmentation and dropout
    subset: int | None = None  # train on a seeded random N of the training images (quick runs)
    device: str = "auto"
    channels_last: bool = True  # NHWC memory layout: ~1.6x faster CNN training on this CPU
    clean_train_size: int = 5000  # training images measured in eval mode each epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        if isinstance(values.get("augment"), dict):
            values["augment"] = Augment(**values["augment"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    settings: dict[str, Any]


SEED_SETTINGS = {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "epochs": 15}

# After airbench94 (Jordan 2024, arXiv 2404.00498), rewritten for a mean (not summed) loss:
# its lr 11.5 per 1024 images with momentum 0.85 is 11.5 / (1 + 1/(1 - 0.85)) = 1.5 at batch 1024,
# and its decoupled decay 0.0153 becomes the coupled 0.0153 / 11.5 = 1.33e-3 of torch's SGD.
# Batch 256, not airbench's 1024: on 2 CPU cores a step of 256 runs ~1.5x more images per second
# (its activations stay in cache); the lr scales with the batch (the same lr per image).
FAST_SETTINGS: dict[str, Any] = {
    "model": "fastnet", "optimizer": "sgd", "batch_size": 256, "epochs": 10,
    "lr": 1.5 * 256 / 1024, "momentum": 0.85, "weight_decay": 0.0153 / 11.5,
    # BatchNorm shifts learn 64x faster with the same decay per step: they are few and benefit.
    "bias_lr_scale": 64.0,
    # Triangular: 0.2 -> 1 over the first 23%, then down to 0.07 (fractions of lr).
    "schedule": "onecycle", "warmup": 0.23, "lr_start": 0.2, "lr_end": 0.07,
    "label_smoothing": 0.2, "lookahead": True, "whiten_bias_epochs": 3,
    # Flip by alternation (each image seen both ways in any two epochs) and shifts of 2 pixels.
    "augment": Augment(translate=2), "alternate_flip": True, "tta": True,
}

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("base", "the seed's base CNN (3 conv blocks, no regularisation); overfits",
               {"model": "base", **SEED_SETTINGS}),
        Recipe("robust", "base + flip/rotation 0.1/zoom 0.1 augmentation + Dropout(0.5)",
               {"model": "base_dropout", **SEED_SETTINGS,
                "augment": Augment(flip=True, rotation=0.1, zoom=0.1)}),
        Recipe("bn", "the seed's BatchNorm + Dropout CNN (2 convs per block, MLP head)",
               {"model": "bn", **SEED_SETTINGS}),
        Recipe("fast", "airbench-style whitened VGG, lookahead, TTA: 0.906 val in 34 min on 2 cores",
               FAST_SETTINGS),
        Recipe("fast_small", "fast at half width (4x fewer FLOPs): for budgets of a few minutes",
               {**FAST_SETTINGS, "model": "fastnet_small"}),
    ]
}


def list_recipes() -> list[Recipe]:
    return list(RECIPES.values())


def make_config(recipe: str, **overrides: Any) -> TrainConfig:
    """The recipe's config with `overrides` applied; None means "keep the recipe's value"."""
    if recipe not in RECIPES:
        names = ", ".join(RECIPES)
        raise UserError(f"unknown recipe '{recipe}' (choose from: {names})")
    config = TrainConfig(recipe=recipe, **RECIPES[recipe].settings)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in overrides.items():
        if key not in fields:
            raise UserError(f"unknown setting '{key}'")
        if value is None:
            continue
        current = getattr(config, key)
        if current is not None and not _same_kind(current, value):
            raise UserError(f"setting '{key}' expects {type(current).__name__}, got {value!r}")
        setattr(config, key, value)
    if config.optimizer == "sgd" and overrides.get("batch_size") and overrides.get("lr") is None:
        # SGD recipes are tuned per image: a new batch size keeps the lr per image.
        config.lr *= config.batch_size / RECIPES[recipe].settings["batch_size"]
    validate(config)
    return config


def _same_kind(current: Any, value: Any) -> bool:
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, float):
        return isinstance(value, int | float)
    return isinstance(value, type(current))


def validate(config: TrainConfig) -> None:
    checks = [
        (config.epochs >= 1, "--epochs must be at least 1"),
        (config.batch_size >= 2, "--batch-size must be at least 2"),
        (config.lr > 0, "--lr must be positive"),
        (0.0 <= config.val_fraction < 1.0, "--val-fraction must be in [0, 1)"),
        (config.subset is None or config.subset >= 2, "--subset must be at least 2"),
        (config.bias_lr_scale > 0, "bias_lr_scale must be positive"),
        (config.optimizer in ("adam", "sgd"), f"unknown optimizer '{config.optimizer}'"),
        (config.schedule in ("constant", "onecycle"), f"unknown schedule '{config.schedule}'"),
        (config.device in ("auto", "cpu", "cuda") or config.device.startswith("cuda:"),
         f"unknown device '{config.device}' (auto, cpu or cuda)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def lr_at(config: TrainConfig, progress: float) -> float:
    """Learning rate at `progress` in [0, 1] of training; a pure function, so resume is exact.

    onecycle is piecewise linear: lr_start -> 1 at `warmup` -> lr_end (fractions of `lr`).
    """
    if config.schedule == "constant":
        return config.lr
    progress = min(max(progress, 0.0), 1.0)
    if config.warmup > 0 and progress < config.warmup:
        fraction = config.lr_start + (1 - config.lr_start) * progress / config.warmup
    else:
        rest = (progress - config.warmup) / max(1e-12, 1.0 - config.warmup)
        fraction = 1 + (config.lr_end - 1) * rest
    return config.lr * fraction
