"""Every training setting in one dataclass, the named recipes, and the one way to change them.

`TrainConfig` is what a run trains with; its fields are the keywords of `cifarlab.train(...)` and
the keys of `--set key=value` and `--config FILE`. Changes go through `apply`, which rejects
unknown keys (with a "did you mean") and values of the wrong type, then `validate` checks ranges:
a typo must never be silently ignored (nanoGPT's configurator does the same).

This module imports no torch, so `cifarlab --help` and `--print-config` stay instant.

    >>> from cifarlab.config import TrainConfig, apply, resolve
    >>> apply(TrainConfig(), {"epochs": 3, "augment.flip": True}).augment.flip
    True
    >>> resolve("robust").augment.rotation
    0.1
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from cifarlab.errors import UserError
from cifarlab.text import plural


@dataclass(frozen=True)
class Augment:
    """Which augmentations a run uses during training (never at evaluation).

    The defaults are the Keras layers of the classic Keras tutorial's robust model when switched on:
    RandomFlip("horizontal"), RandomRotation(0.1), RandomZoom(0.1).
    """

    flip: bool = False  # random horizontal flip, p = 0.5
    rotation: float = 0.0  # max rotation as a fraction of a full turn (Keras RandomRotation)
    zoom: float = 0.0  # max zoom in or out as a fraction (Keras RandomZoom)
    translate: int = 0  # max shift in pixels, reflect-padded (random crop with padding)
    # Occlusion: the net must use the whole object, not its one most telling patch.
    cutout: int = 0  # a square of this many pixels a side, centred anywhere (partly outside the
    # image too), set to the batch's mean colour, in every image (DeVries & Taylor 2017: 16)
    erasing: float = 0.0  # this share of the images gets a random rectangle (2-33% of the area,
    # aspect 0.3-3.3) of noise (Zhong et al. 2017; Keras' RandomErasing, torchvision's p)
    # Mixing two images and their labels (soft targets; train_acc then counts the larger share):
    mixup: float = 0.0  # blend each image with another by a Beta(mixup, mixup) share (0.2-1)
    cutmix: float = 0.0  # paste a box of another image, its area ~ Beta(cutmix, cutmix) (1.0);
    # with both on, each image is mixed one way or the other, half and half (as timm does)
    # Colour jitter, one random factor per image (Keras' RandomBrightness/RandomContrast and
    # torchvision's ColorJitter saturation), clipped to 0..255:
    brightness: float = 0.0  # add up to +-brightness x 255 to every pixel
    contrast: float = 0.0  # scale each channel about its image mean by 1 +- contrast
    saturation: float = 0.0  # scale the colour about the image's grey by 1 +- saturation
    # Robustness to corruptions (docs/robustness.md): each image gets mix_width random chains of
    # operations, mixed into it as AugMix does. None of the operations is a CIFAR-10-C corruption.
    augmix: bool = False  # AugMix's 9 operations in the chains (autocontrast, equalize, ...)
    prime: bool = False  # PRIME's random 3x3 filter and random colour curve in the chains
    mix_width: int = 3  # chains per image (AugMix: 3)
    mix_depth: int = 0  # operations per chain; 0: 1 to 3 at random (AugMix's default)
    mix_severity: int = 3  # strength of AugMix's operations, 1-10 (AugMix for CIFAR: 3)
    mix_share: float = 1.0  # share of the images that are mixed; the rest stay as they are
    # AugMix's Jensen-Shannon consistency: train on each image and two mixed copies, with this
    # weight on the divergence between their predictions (AugMix: 12). A step costs 3x.
    consistency: float = 0.0

    @property
    def active(self) -> bool:
        """Whether any per-image augmentation is on (mixup and cutmix: `mixes_labels`)."""
        return (self.flip or self.rotation > 0 or self.zoom > 0 or self.translate > 0
                or self.cutout > 0 or self.erasing > 0 or self.colour or self.augmix or self.prime)

    @property
    def mixes_labels(self) -> bool:
        """Whether images are mixed in pairs, which makes the labels soft targets."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def colour(self) -> bool:
        """Whether any colour jitter is on."""
        return self.brightness > 0 or self.contrast > 0 or self.saturation > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """All settings of one training run (frozen: change one with `apply` or dataclasses.replace).
    The recipes below are named sets of these values."""

    recipe: str = "base"  # where the other settings' defaults come from
    name: str | None = None  # a label for the run wherever runs are listed (default: its recipe or model)
    model: str = "base"  # a registered name, or "file.py:Class" / "package.module:Name"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the model's factory
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    # "adam" (Keras defaults), "adamw" (Adam with decoupled weight decay, Keras' AdamW),
    # "sgd" (Nesterov) or "muon" (see optim.py)
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd and muon's SGD part
    muon_lr: float = 0.24  # muon: step size of the conv filters, relative to their (fixed) norm
    muon_momentum: float = 0.6  # muon: Nesterov momentum of the conv filters
    # adam, sgd: L2, added to the gradient; adamw: decoupled, each step shrinks the weights by
    # lr x weight_decay (adamw without a weight_decay of your own takes Keras' 0.004)
    weight_decay: float = 0.0
    # The lr's course (optim.lr_at): "constant"; "onecycle" (linear decay to lr_end); "cosine"
    # (half a cosine to lr_end: Keras CosineDecay); "step" (x step_factor every step_every
    # epochs: PyTorch StepLR); "plateau" (x plateau_factor when `monitor` stalls: Keras
    # ReduceLROnPlateau). Any of them may start with a warm-up.
    schedule: str = "constant"
    warmup: float = 0.0  # fraction of training over which the lr climbs linearly to `lr`
    lr_start: float = 0.0  # the lr where the warm-up starts, as a fraction of `lr`
    lr_end: float = 0.0  # the lowest lr, a fraction of `lr`: where onecycle and cosine end,
    # the floor of step and plateau (Keras CosineDecay's alpha, ReduceLROnPlateau's min_lr)
    step_every: int = 0  # step: epochs between drops (StepLR's step_size); step needs it set
    step_factor: float = 0.1  # step: each drop multiplies the lr by this (StepLR's gamma)
    # plateau: drop after this many evaluated epochs with no better `monitor`. Keras' default
    # is 10, for runs of hundreds of epochs; these runs are 10-30 epochs long.
    plateau_patience: int = 2
    plateau_factor: float = 0.1  # plateau: each drop multiplies the lr by this (Keras' factor)
    label_smoothing: float = 0.0
    # Imbalanced folders (Keras' fit(class_weight=...)): each image's loss counts by its class's
    # weight. "balanced": n / (classes x count) from the run's training images, so every class
    # weighs as much as in a balanced folder; or a mapping {class name or index: weight}, the
    # classes it leaves out weighing 1. Training only: val_loss stays unweighted.
    class_weight: dict[str, float] | str | None = None
    bias_lr_scale: float = 1.0  # sgd: lr multiplier for BatchNorm shifts (their decay / the same)
    lookahead: bool = False  # pull the weights to an EMA of themselves every 5 steps (airbench)
    whiten_bias_epochs: float = 0.0  # models with a whitening layer: train its bias this long (0: always)
    whiten_bias_lr_scale: float = 1.0  # the whitening bias's lr, as a multiple of lr
    whiten_bias_decay: bool = False  # its lr falls linearly to 0 at whiten_bias_epochs (airbench94_muon)
    augment: Augment = field(default_factory=Augment)
    alternate_flip: bool = False  # mirror each image in every other epoch, not at random
    tta: bool = False  # also report the final val accuracy with test-time augmentation
    tta_fraction: float = 1.0  # TTA views only for this share of least-confident images
    low_res_share: float = 0.0  # this share of the epochs, the first, trains on images resized
    low_res: int = 24  # to low_res pixels: an epoch costs (low_res / 32)^2 of the FLOPs
    calibrate: bool = True  # fit a temperature on val after training: probabilities mean what they say
    monitor: str = "val_acc"  # best weights (best.pt) and early stopping follow this metric
    early_stop: int = 0  # stop after this many epochs without a better `monitor` (0: never)
    budget: float | None = None  # seconds ("10m" reads as 600): `epochs` is sized to fit it
    # --budget with fastnet: the widest net of budget.WIDTHS that fits this many epochs (0: keep
    # the recipe's net; a model_kwargs.widths of yours is kept too)
    budget_min_epochs: int = 0
    last_epoch_share: float = 1.0  # the last epoch trains this share of its steps (--budget: to fill)
    max_epochs: int | None = None  # with a budget: at most this many epochs (a given `epochs`)
    data: str | None = None  # data source path, str or Path (resolved when the run starts)
    # CIFAR-100's labels, as Keras' cifar100.load_data(label_mode=...): "fine" (100 classes) or
    # "coarse" (20 superclasses); other sources have one set, "fine"
    label_mode: str = "fine"
    val_fraction: float = 0.1
    split_seed: int = 0  # fixes the validation images; independent of `seed`
    seed: int = 0  # fixes initialisation, shuffling, augmentation and dropout
    subset: int | None = None  # train on a seeded random N of the training images (quick runs)
    device: str = "auto"
    channels_last: bool = True  # NHWC memory layout: ~1.6x faster CNN training on this CPU
    # torch.compile the network for training and its evaluations (fuses BatchNorm, GELU and the
    # element-wise work on GPUs; on this CPU a step ran ~10% slower, BENCHMARKS.md round two).
    # Its compilation (about a minute) is not counted by --budget's probe.
    compile: bool = False
    clean_train_size: int = 5000  # training images measured in eval mode each epoch
    # Measure val and clean train accuracy every N epochs and always after the last (0: after the
    # last only); other epochs' cells stay empty. The timed recipes spend that time training.
    eval_every: int = 1
    checkpoint_every: int = 0  # also save a resumable checkpoint every N steps (0: every epoch)
    tensorboard: bool = False  # also log to RUN/tensorboard (needs the tensorboard package)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from a dict (a config file, a checkpoint), checked like user input."""
        return apply(cls(), values)


MONITORS = ("val_acc", "val_loss")
LABEL_MODES = ("fine", "coarse")  # sources.LABEL_MODES names their classes; this module stays light
OPTIMIZERS = ("adam", "adamw", "sgd", "muon")
SCHEDULES = ("constant", "onecycle", "cosine", "step", "plateau")
ADAMW_WEIGHT_DECAY = 0.004  # Keras' AdamW default (torch's AdamW: 0.01)


def better(monitor: str, value: float, best: float | None) -> bool:
    """Whether `value` of `monitor` beats `best` (None: nothing yet): lower val_loss, higher
    val_acc. One rule for best.pt, early stopping and the plateau schedule."""
    return best is None or (value < best if monitor == "val_loss" else value > best)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
AUGMENT_FIELDS = {f.name: f for f in dataclasses.fields(Augment)}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


TYPES = _hints(TrainConfig)
AUGMENT_TYPES = _hints(Augment)


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


# What Keras (and PyTorch) users type, and cifarlab's name for it: spelled differently enough that
# difflib would not find it ("validation_split" and "val_fraction" share too few letters).
KERAS_NAMES = {
    "validation_split": "val_fraction", "learning_rate": "lr", "batch": "batch_size",
    "batchsize": "batch_size", "epoch": "epochs", "num_epochs": "epochs", "n_epochs": "epochs",
    "optimiser": "optimizer", "decay": "weight_decay", "lr_schedule": "schedule",
    "random_state": "seed", "random_seed": "seed", "shuffle_seed": "seed",
    "patience": "early_stop", "early_stopping": "early_stop", "verbose": "quiet (the opposite)",
    "validation_data": "val_data (a keyword of cl.train)", "x": "data=(x, y)", "y": "data=(x, y)",
    "steps_per_epoch": "subset (images an epoch, not steps)", "initial_epoch": "cl.resume(path)",
    "dropout": "a model's own setting (model_kwargs)",
}


def unknown_key(key: str, known: typing.Iterable[str], what: str = "setting") -> UserError:
    known = list(known)
    alias = KERAS_NAMES.get(key.lower())
    hint = f" (did you mean '{alias}'?)" if alias and alias != key else suggest(key, known)
    if hint:  # a good guess says more than a list of 40 names
        return UserError(f"unknown {what} '{key}'{hint}; cifarlab train --print-config lists them all")
    return UserError(f"unknown {what} '{key}'; the settings are: {', '.join(known)}")


def type_name(kind: Any) -> str:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if args and typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join([*(type_name(a) for a in args), "none"])
    origin = typing.get_origin(kind)
    return getattr(origin or kind, "__name__", str(kind))


def check_value(key: str, value: Any, kind: Any) -> Any:
    """`value` if it has the field's type (an int is a fine float); else a UserError."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if len(members) > 1:  # a setting of several types (class_weight): the first that fits
            fitting = [m for m in members if _fits(value, m)]
            if not fitting:
                raise UserError(f"setting '{key}' expects {type_name(kind)}, got {value!r}")
            members = fitting
        kind = members[0]
        origin = typing.get_origin(kind)
    ok = False
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = not math.isnan(value)
    elif kind is str:
        ok = isinstance(value, str)
    elif origin is dict or kind is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if not ok:
        raise UserError(f"setting '{key}' expects {type_name(kind)}, got {value!r}")
    return value


def _fits(value: Any, kind: Any) -> bool:
    try:
        check_value("", value, kind)
    except UserError:
        return False
    return True


def parse_text(key: str, text: str, kind: Any) -> Any:
    """A `--set key=value` string typed by the field it sets ("true", "1e-3", "none" ...)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null", ""):
            return None
        kind = next(a for a in args if a is not type(None))
    low = text.strip().lower()
    try:
        if kind is bool:
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
            raise ValueError(text)
        if kind is int:
            return int(low)
        if kind is float:
            return float(low)
    except ValueError:
        raise UserError(f"setting '{key}' expects {type_name(kind)}, got {text!r}") from None
    if kind is str:
        return text
    return _literal(text)


def _literal(text: str) -> Any:
    """A free-form value (model_kwargs.*): JSON if it parses (numbers, true, lists), else text."""
    try:
        return json.loads(text)
    except ValueError:
        low = text.strip().lower()
        return {"true": True, "false": False, "none": None}.get(low, text)


def parse_sets(items: typing.Iterable[str]) -> dict[str, Any]:
    """`["lr=0.01", "augment.flip=true"]` -> {"lr": 0.01, "augment.flip": True}, typed per field."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {item!r}")
        out[key] = parse_text(key, text, field_type(key))
    return out


def field_type(key: str) -> Any:
    head, _, rest = key.partition(".")
    if head not in FIELDS:
        raise unknown_key(head, FIELDS)
    if not rest:
        return TYPES[head]
    if head == "augment":
        if rest not in AUGMENT_FIELDS:
            raise unknown_key(key, [f"augment.{k}" for k in AUGMENT_FIELDS])
        return AUGMENT_TYPES[rest]
    if head == "model_kwargs":
        return Any
    if head == "class_weight":
        return float
    raise UserError(f"setting '{head}' has no parts: use {head}=VALUE")


def apply(config: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """A new config with `changes` (flat or nested keys: "augment.flip" or {"augment": {...}})."""
    values = config.to_dict()
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if head not in FIELDS:
            raise unknown_key(head, FIELDS)
        if head == "augment":
            if rest:
                if rest not in AUGMENT_FIELDS:
                    raise unknown_key(key, [f"augment.{k}" for k in AUGMENT_FIELDS])
                value = {rest: value}
            elif isinstance(value, Augment):
                value = value.to_dict()
            if not isinstance(value, dict):
                raise UserError(f"setting 'augment' expects a mapping such as {{'flip': true}}, "
                                f"got {value!r}")
            for name, item in value.items():
                if name not in AUGMENT_FIELDS:
                    raise unknown_key(f"augment.{name}", [f"augment.{k}" for k in AUGMENT_FIELDS])
                values["augment"][name] = check_value(f"augment.{name}", item, AUGMENT_TYPES[name])
        elif head == "model_kwargs" and rest:
            values["model_kwargs"] = {**values["model_kwargs"], rest: value}
        elif head == "class_weight" and rest:  # --set class_weight.cat=2: one class's weight
            mapping = values["class_weight"] if isinstance(values["class_weight"], dict) else {}
            values["class_weight"] = {**mapping, rest: check_value(key, value, float)}
        elif rest:
            raise UserError(f"setting '{head}' has no parts: use {head}=VALUE")
        else:
            values[head] = check_value(head, _coerce(head, value), TYPES[head])
    values["augment"] = Augment(**values["augment"])
    values["model_kwargs"] = dict(values["model_kwargs"])
    if isinstance(values["class_weight"], dict):
        values["class_weight"] = _class_weights(values["class_weight"])
    new = TrainConfig(**values)
    validate(new)
    return new


def _coerce(key: str, value: Any) -> Any:
    """The values a setting takes in more than one spelling, in the one it is stored in: a path
    (str or os.PathLike) as str, a budget as seconds ("90s", "10m", "1.5h" or a number)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if key == "budget" and isinstance(value, str):
        return parse_duration(value)
    if key == "class_weight" and isinstance(value, dict):  # Keras' {0: 1.0, 3: 5.0}: index keys
        return {str(k) if isinstance(k, int) and not isinstance(k, bool) else k: v
                for k, v in value.items()}
    return value


def _class_weights(mapping: dict[str, Any]) -> dict[str, float]:
    """A class_weight mapping with every weight a number >= 0 (as floats), or a UserError."""
    out = {}
    for name, weight in mapping.items():
        if (isinstance(weight, bool) or not isinstance(weight, int | float)
                or not math.isfinite(weight) or weight < 0):
            raise UserError(f"class_weight gives '{name}' the weight {weight!r}: weights are "
                            "numbers >= 0")
        out[name] = float(weight)
    return out


_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h' -> seconds.

        >>> parse_duration("1.5h")
        5400.0
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"cannot read the budget '{text}': use e.g. 90s, 10m or 1h")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def evaluates(config: TrainConfig, epoch: int, epochs: int | None = None) -> bool:
    """Whether epoch `epoch` (counted from 1) of `epochs` (else config.epochs) is evaluated:
    every `eval_every`-th, and always the last.

        >>> [e for e in range(1, 9) if evaluates(TrainConfig(epochs=8, eval_every=3), e)]
        [3, 6, 8]
    """
    last = config.epochs if epochs is None else epochs
    return epoch == last or (config.eval_every > 0 and epoch % config.eval_every == 0)


def low_res_epochs(config: TrainConfig, epochs: int | None = None) -> int:
    """How many of the first epochs (of `epochs`, else config.epochs) train at config.low_res."""
    return round(config.low_res_share * (config.epochs if epochs is None else epochs))


def laid_out(config: TrainConfig) -> str:
    """What in the run is laid out for its number of epochs ('' if nothing): such a run cannot be
    extended with --resume --epochs N, because its past steps would have had other values.
    Constant, step and plateau schedules depend on the epoch, not on the run's length."""
    length = plural(config.epochs, "epoch")
    if config.schedule in ("onecycle", "cosine"):
        return f"a {config.schedule} schedule laid out for {length}"
    if config.warmup > 0:
        return f"a warm-up over {config.warmup:g} of its {length}"
    if config.lookahead:
        return f"lookahead, whose averaging grows over its {length}"
    if low_res_epochs(config):
        return f"low-resolution epochs, a share ({config.low_res_share:g}) of its {length}"
    return ""


# Seeds feed numpy's and torch's generators: torch takes at most a signed 64-bit value, numpy no
# negative one (split_seed=-1 passed `apply` and failed as a traceback before issue 22).
MAX_SEED = 2**63 - 1
# A shift of up to 16 pixels is half the image; reflect padding needs less than the image (32).
MAX_TRANSLATE = 16


def validate(config: TrainConfig) -> None:
    """Ranges and choices, all that training needs: a config that passes trains (or fails on its
    data or its model), never on a value found out of range an epoch in. Each message names the
    flag or key to change."""
    a = config.augment
    checks = [
        (0 <= config.seed <= MAX_SEED, f"--seed must be in 0..{MAX_SEED}"),
        (0 <= config.split_seed <= MAX_SEED, f"split_seed must be in 0..{MAX_SEED}"),
        (config.epochs >= 1, "--epochs must be at least 1"),
        (config.name is None or (0 < len(config.name) <= 100 and config.name.isprintable()),
         "--name must be 1 to 100 printable characters"),
        (config.batch_size >= 2, "--batch-size must be at least 2"),
        (config.lr > 0, "--lr must be positive"),
        (0.0 <= config.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {config.val_fraction}"),
        (config.subset is None or config.subset >= 2, "--subset must be at least 2"),
        (config.bias_lr_scale > 0, "bias_lr_scale must be positive"),
        (0 <= config.momentum < 1, "momentum must be in [0, 1)"),
        (config.momentum > 0 or config.optimizer != "sgd",
         "optimizer sgd is Nesterov's, which needs momentum above 0"),
        (0 <= config.muon_momentum < 1, "muon_momentum must be in [0, 1)"),
        (config.lr_start >= 0 and config.lr_end >= 0, "lr_start and lr_end must not be negative"),
        (config.whiten_bias_epochs >= 0, "whiten_bias_epochs must be 0 (always) or a number of epochs"),
        (config.weight_decay >= 0, "weight_decay must not be negative"),
        (0 <= config.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        (0 <= config.warmup < 1, "warmup must be in [0, 1)"),
        (0 < config.tta_fraction <= 1, "tta_fraction must be in (0, 1]"),
        (0 <= config.low_res_share < 1, "low_res_share must be in [0, 1)"),
        (8 <= config.low_res <= 32, "low_res must be in 8..32 pixels"),
        (config.early_stop >= 0, "--early-stop must be 0 (off) or a number of epochs"),
        (config.early_stop == 0 or config.val_fraction > 0,
         "--early-stop watches the validation images, and --val-fraction 0 leaves none"),
        (config.checkpoint_every >= 0,
         "--checkpoint-every must be 0 (every epoch only) or a number of steps"),
        (config.clean_train_size >= 1, "clean_train_size must be at least 1 (training images "
                                       "measured in eval mode each epoch)"),
        (config.eval_every >= 0, "eval_every must be 0 (after the last epoch only) or a number of epochs"),
        (config.early_stop == 0 or config.eval_every > 0,
         "--early-stop watches val after every eval_every epochs, and eval_every 0 validates only "
         "after the last: set eval_every to 1 (or N)"),
        (config.budget is None or config.budget > 0, "--budget must be positive"),
        (config.max_epochs is None or config.max_epochs >= 1, "max_epochs must be at least 1"),
        (config.budget_min_epochs >= 0, "budget_min_epochs must not be negative"),
        (0 < config.last_epoch_share <= 1, "last_epoch_share must be in (0, 1]"),
        (config.augment.rotation >= 0 and config.augment.zoom >= 0 and config.augment.translate >= 0,
         "augment values must not be negative"),
        (config.augment.zoom < 1, "augment.zoom must be below 1"),
        (0 <= a.cutout <= 32, "augment.cutout is a side in pixels: 0 (off) to 32"),
        (0 <= a.erasing <= 1, "augment.erasing is the share of images erased: in [0, 1]"),
        (all(0 <= alpha < math.inf for alpha in (a.mixup, a.cutmix)),
         "augment.mixup and augment.cutmix are Beta(alpha, alpha) alphas: 0 (off) or positive"),
        (config.class_weight is None or isinstance(config.class_weight, dict)
         or config.class_weight == "balanced",
         f"class_weight must be 'balanced' or a mapping {{class: weight}}, got "
         f"{config.class_weight!r}{suggest(str(config.class_weight), ['balanced'])}"),
        (config.augment.translate <= MAX_TRANSLATE,
         f"augment.translate must be at most {MAX_TRANSLATE} pixels (half the image)"),
        (0 <= config.augment.brightness <= 1, "augment.brightness must be in [0, 1]"),
        (0 <= config.augment.contrast < 1 and 0 <= config.augment.saturation < 1,
         "augment.contrast and augment.saturation must be in [0, 1)"),
        (config.whiten_bias_epochs >= 0, "whiten_bias_epochs must not be negative"),
        (config.whiten_bias_lr_scale > 0, "whiten_bias_lr_scale must be positive"),
        (config.augment.mix_width >= 1, "augment.mix_width must be at least 1"),
        (0 <= config.augment.mix_depth <= 10, "augment.mix_depth must be in 0..10 (0: 1-3 at random)"),
        (1 <= config.augment.mix_severity <= 10, "augment.mix_severity must be in 1..10"),
        (0 < config.augment.mix_share <= 1, "augment.mix_share must be in (0, 1]"),
        (config.augment.consistency >= 0, "augment.consistency must not be negative"),
        (config.augment.consistency == 0 or config.augment.augmix or config.augment.prime,
         "augment.consistency compares mixed copies of each image: set augment.augmix or "
         "augment.prime too"),
        (config.augment.consistency == 0 or not config.augment.mixes_labels,
         "augment.consistency compares copies of one image, and mixup/cutmix mix two: use one "
         "or the other"),
        (config.optimizer in OPTIMIZERS, f"unknown optimizer '{config.optimizer}' "
         f"({', '.join(OPTIMIZERS)}){suggest(config.optimizer, OPTIMIZERS)}"),
        (config.muon_lr > 0, "muon_lr must be positive"),
        (config.schedule in SCHEDULES, f"unknown schedule '{config.schedule}' "
         f"({', '.join(SCHEDULES)}){suggest(config.schedule, SCHEDULES)}"),
        (0 <= config.lr_start <= 1 and 0 <= config.lr_end <= 1,
         "lr_start and lr_end are fractions of lr: in [0, 1]"),
        (config.step_every >= 0, "step_every must be 0 (unset) or a number of epochs"),
        (config.schedule != "step" or config.step_every >= 1,
         "schedule 'step' needs step_every, the epochs between its drops (e.g. step_every=5)"),
        (0 < config.step_factor < 1 and 0 < config.plateau_factor < 1,
         "step_factor and plateau_factor multiply the lr at each drop: in (0, 1)"),
        (config.plateau_patience >= 1, "plateau_patience must be at least 1 epoch"),
        (config.schedule != "plateau" or config.val_fraction > 0,
         "schedule 'plateau' watches the validation images, and --val-fraction 0 leaves none"),
        (config.monitor in MONITORS, f"unknown monitor '{config.monitor}' ({' or '.join(MONITORS)})"),
        (config.label_mode in LABEL_MODES, f"unknown label_mode '{config.label_mode}' (fine or "
         f"coarse: CIFAR-100's 100 classes or 20 superclasses){suggest(config.label_mode, LABEL_MODES)}"),
        (config.device in ("auto", "cpu", "cuda") or config.device.startswith("cuda:"),
         f"unknown device '{config.device}' (auto, cpu or cuda)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Settings from a YAML or JSON file; a run's own config.json (settings under "config")
    works too, so `--config RUN/config.json` reruns a run exactly. The file may come from anyone:
    plaindata reads it within bounds, without YAML aliases, as plain data with text keys."""
    from cifarlab import plaindata

    values = plaindata.read(path, "config file")
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a mapping of settings (key: value)")
    return {key: _yaml_number(key, value) for key, value in values.items()}


def check_named_model(from_file: dict[str, Any], changes: dict[str, Any], path: object) -> None:
    """A model a settings file names by import spec ("x.py:Net", "pkg.mod:Net") is code: cifarlab
    imports it only when the user names it too (--model, model=), as `train --resume` asks. A
    settings file from someone else must not run their code (a registered name runs none)."""
    named = from_file.get("model")
    if isinstance(named, str) and ":" in named and changes.get("model") is None:
        raise UserError(f"{path} names the model '{named}', and a file never makes cifarlab import "
                        f"code: name it yourself to train it: --model {named}")


def _yaml_number(key: str, value: Any) -> Any:
    """YAML 1.1 reads `1e-3` (no dot) as a string: a float setting takes it as the number meant."""
    kind = TYPES.get(key)
    if isinstance(value, str) and kind in (float, float | None):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# ---------------------------------------------------------------------------------------------
# The named recipes: a model plus the settings it trains with, each number with its reason.
# `resolve("base", changes={"epochs": 3})` starts from a recipe and applies overrides strictly; it
# adds the precedence of the command line: recipe < config file < flags.


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
FAST_SGD_SETTINGS: dict[str, Any] = {
    "model": "fastnet", "optimizer": "sgd", "batch_size": 256, "epochs": 10,
    "lr": 1.5 * 256 / 1024, "momentum": 0.85, "weight_decay": 0.0153 / 11.5,
    # BatchNorm shifts learn 64x faster with the same decay per step: they are few and benefit.
    "bias_lr_scale": 64.0,
    # Triangular: 0.2 -> 1 over the first 23%, then down to 0.07 (fractions of lr).
    "schedule": "onecycle", "warmup": 0.23, "lr_start": 0.2, "lr_end": 0.07,
    "label_smoothing": 0.2, "lookahead": True, "whiten_bias_epochs": 3,
    # Flip by alternation (each image seen both ways in any two epochs) and shifts of 2 pixels.
    "augment": Augment(translate=2), "alternate_flip": True, "tta": True,
    # TTA views for the 25% least confident images only: 0.9138 against 0.9134 for all of them
    # (a 15-epoch fast model), at 2.25 views an image instead of 6.
    "tta_fraction": 0.25,
    # Val and clean train accuracy after the last epoch only: the per-epoch passes over 10,000
    # images took ~1.5 of `fast`'s 25.7 minutes on 2 cores (round 3); train loss shows each epoch.
    "eval_every": 0,
}

# After airbench94_muon (Jordan 2024): Muon moves the conv filters, the same SGD as `fast_sgd`
# the rest; its lr decays linearly from the start (no warm-up, no lookahead). 8 epochs reach what
# `fast_sgd` reaches in 10: 0.911 +- 0.002 val with TTA over 3 seeds, against 0.909 +- 0.002
# (measured on a GPU: accuracy per epoch does not depend on the machine; BENCHMARKS.md). A Muon
# step costs ~5% more on the CPU (Newton-Schulz), so `fast` is Muon: ~16% less training.
# muon_lr is per step: airbench's 0.24 at batch 2000, scaled to batch 256 by the square root of
# the batch ratio (more, smaller steps): 0.086; 0.043 and 0.17 measured no better.
# Label smoothing 0.1, not 0.2: +0.3 points with TTA over 3 seeds.
# The whitening layer's bias at airbench94_muon's rate per image (36.2x the head's lr), falling
# linearly to 0 over its 3 epochs: 0.9125 +- 0.0020 with TTA over 3 seeds against 0.9100 +- 0.0011
# (H100, round three; BENCHMARKS.md, where the other levers of issue 23 measured no better).
FAST_SETTINGS: dict[str, Any] = {
    **FAST_SGD_SETTINGS, "optimizer": "muon", "epochs": 8, "lookahead": False,
    "muon_lr": 0.24 * (256 / 2000) ** 0.5, "muon_momentum": 0.6, "label_smoothing": 0.1,
    "schedule": "onecycle", "warmup": 0.0, "lr_start": 1.0, "lr_end": 0.0,
    "whiten_bias_lr_scale": 36.2, "whiten_bias_decay": True,
    # --budget buys width once 8 epochs fit: Muon's 10 epochs measured no better than its 8
    # (0.908 against 0.911 with TTA, GPU), so time beyond them goes to a wider net (budget.WIDTHS).
    "budget_min_epochs": 8,
}
# One epoch of 80 batches (20,480 images) on the quarter-FLOP net: ~20 s of training on 2 CPU
# cores. Muon learns far more per step than SGD early on (0.730 +- 0.006 val over 3 seeds, SGD
# 0.626); for one short epoch a larger filter step pays (muon_lr 0.17: 0.721, 0.24: 0.730, 0.30:
# 0.732 +- 0.012; 22,500 images). With the whitening bias at its faster rate (round three) 20,480
# images reach 0.717 +- 0.004 over 3 seeds on 2 threads (0.723 +- 0.004 on 1; 0.715 +- 0.001
# without it, 1 thread), 22,500 0.736 (1 thread).
QUICK_SETTINGS: dict[str, Any] = {
    **FAST_SETTINGS, "model": "fastnet_small", "epochs": 1, "subset": 20_480, "muon_lr": 0.24,
    "label_smoothing": 0.2, "tta": False,
}

# fast, trained to hold up under corruptions (issue 24, docs/robustness.md): half of the training
# images are mixed with 3 random chains of AugMix's nine operations and PRIME's random filter and
# colour curve (augment.py; none of them is a CIFAR-10-C corruption, so the benchmark stays
# unseen), the other half stay clean. On fast_small for 6 epochs (1,000 val images, 3 severities)
# the chains lifted corrupted accuracy from 0.646 to 0.775 (noise 0.25 -> 0.78). At full size,
# mixing half instead of all kept the corrupted accuracy (82.5% against 82.7%) and gave back 1.8
# points of clean accuracy (0.903 against 0.885 with TTA; 3 and 2 seeds); 10 epochs instead of 8
# give the net time to learn the harder images.
FAST_ROBUST_SETTINGS: dict[str, Any] = {
    **FAST_SETTINGS, "epochs": 10, "budget_min_epochs": 10,
    # the whitening bias as it was measured (issue 24): round three's faster bias was not tried
    # with the mixed chains
    "whiten_bias_lr_scale": 1.0, "whiten_bias_decay": False,
    "augment": Augment(translate=2, augmix=True, prime=True, mix_share=0.5),
}

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("base", "the classic Keras tutorial's base CNN (3 conv blocks, no regularisation); overfits",
               {"model": "base", **SEED_SETTINGS}),
        Recipe("robust", "base + flip/rotation 0.1/zoom 0.1 augmentation + Dropout(0.5)",
               {"model": "base_dropout", **SEED_SETTINGS,
                "augment": Augment(flip=True, rotation=0.1, zoom=0.1)}),
        Recipe("bn", "the Keras tutorial's BatchNorm + Dropout CNN (2 convs per block, MLP head)",
               {"model": "bn", **SEED_SETTINGS}),
        Recipe("fast", "airbench-style whitened VGG, Muon, TTA: 0.91 val in 8 epochs (21 min "
               "on 2 cores)", FAST_SETTINGS),
        Recipe("fast_small", "fast at half width (4x fewer FLOPs): for budgets of a few minutes",
               # label smoothing 0.2: as measured (9 epochs, 0.891 with TTA; BENCHMARKS.md)
               {**FAST_SETTINGS, "model": "fastnet_small", "label_smoothing": 0.2}),
        Recipe("fast_robust", "fast with AugMix and PRIME augmentation chains, 10 epochs: "
               "accuracy that holds up under noise, blur and weather (docs/robustness.md)",
               FAST_ROBUST_SETTINGS),
        Recipe("fast_sgd", "fast with airbench94's Nesterov SGD + lookahead: 10 epochs to fast's "
               "accuracy in 8", FAST_SGD_SETTINGS),
        Recipe("quick", "the Keras tutorial models' best accuracy (0.72 val) in about 20 s on 2 CPU cores",
               QUICK_SETTINGS),
    ]
}


def list_recipes() -> list[Recipe]:
    return list(RECIPES.values())


RENAMED = {"fast_muon": "fast"}  # old names, still read from config files and flags


def base_config(recipe: str) -> TrainConfig:
    recipe = RENAMED.get(recipe, recipe)
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe '{recipe}'{suggest(recipe, RECIPES)} "
                        f"(choose from: {', '.join(RECIPES)})")
    return apply(TrainConfig(recipe=recipe), RECIPES[recipe].settings)


def resolve(recipe: str | None = None, config_file: str | os.PathLike[str] | None = None,
            changes: dict[str, Any] | None = None) -> TrainConfig:
    """recipe < config file < `changes` (flags, --set, keywords). The recipe is, in that order:
    the `recipe` argument, the file's "recipe", else "base".

    One rule for a budget, wherever it comes from (cl.train, cl.search, --budget, a file): with a
    `budget`, the epochs are sized to fit it, and an `epochs` the user gave is the most it may
    choose (max_epochs).

        >>> resolve("fast", changes={"budget": "10m", "epochs": 5}).max_epochs
        5
    """
    from_file = read_file(config_file) if config_file is not None else {}
    changes = dict(changes or {})
    check_named_model(from_file, changes, config_file)
    name = recipe or from_file.get("recipe") or "base"
    if not isinstance(name, str):
        raise UserError(f"setting 'recipe' expects str, got {name!r}")
    config = base_config(name)
    name = config.recipe  # a renamed recipe's current name
    merged = {**from_file, **changes, "recipe": name}
    if merged.get("budget") is not None and "epochs" in merged and "max_epochs" not in merged:
        merged["max_epochs"] = merged.pop("epochs")
    config = apply(config, merged)
    if config.optimizer == "adamw" and "weight_decay" not in merged:
        # Keras' AdamW decays by default; the recipe's decay was tuned for another optimizer.
        config = apply(config, {"weight_decay": ADAMW_WEIGHT_DECAY})
    if (config.optimizer in ("sgd", "muon") and "batch_size" in merged and "lr" not in merged
            and RECIPES[name].settings.get("optimizer") in ("sgd", "muon")):
        # SGD recipes are tuned per image: a new batch size keeps the lr per image.
        config = apply(config, {
            "lr": config.lr * config.batch_size / RECIPES[name].settings["batch_size"]})
    return config
