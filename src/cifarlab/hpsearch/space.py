"""The search space of `cifarlab search`: which settings vary, over what, checked before any trial.

A space is a mapping (or a YAML/JSON file) from setting to range, one line per setting:

    lr: {log_uniform: [1e-4, 1e-2]}       # a float, uniform in log space
    label_smoothing: {uniform: [0, 0.2]}  # a float
    epochs: {int: [5, 20]}                # a whole number (log_int: uniform in log space)
    optimizer: {choice: [adam, sgd]}      # one of a list (numbers, strings, true/false)
    augment.flip: {choice: [true, false]}
    model_kwargs.width: {int: [16, 64]}

Keys are the settings of `--set` (`cl.make_config()` shows them all), checked with the same
did-you-mean errors; each range end and choice is checked against the setting's type and range
when the space is read, not after an hour of trials. This module imports neither torch nor optuna.

    >>> from cifarlab.hpsearch.space import read_space
    >>> [p.key for p in read_space({"lr": {"log_uniform": [1e-4, 1e-2]}}, "base")]
    ['lr']
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import TYPE_CHECKING, Any

from cifarlab import config as configuration
from cifarlab.config import TrainConfig
from cifarlab.errors import UserError

if TYPE_CHECKING:
    import optuna

KINDS = ("log_uniform", "uniform", "int", "log_int", "choice")
# Settings a search may not vary, with the reason: the trials must stay comparable and honest.
NOT_SEARCHABLE = {
    "recipe": "search within one recipe (the model, optimizer ... are settings you can search)",
    "data": "all trials train on the same data",
    "val_fraction": "all trials validate on the same images",
    "split_seed": "all trials validate on the same images",
    "subset": "more images always look better; fix it with --set subset=N",
    "monitor": "the search maximises val_acc",
    "budget": "the search has one budget (--budget); fix epochs with --set epochs=N",
    "max_epochs": "fix epochs with --set epochs=N",
    "device": "not a hyperparameter", "tensorboard": "not a hyperparameter",
    "checkpoint_every": "not a hyperparameter", "clean_train_size": "not a hyperparameter",
    "model_kwargs": "search one of its keys instead, e.g. model_kwargs.width",
}

# A space per recipe when none is given: the few settings that matter most, each with its reason.
# epochs is left out on purpose: more epochs look better and cost more; fix it with --set epochs=N.
ADAM_SPACE: dict[str, Any] = {
    "lr": {"log_uniform": [3e-4, 3e-3]},  # a decade around Keras' 1e-3, Adam's usual good zone
    "schedule": {"choice": ["constant", "onecycle"]},  # onecycle = linear decay to 0 here
    "label_smoothing": {"uniform": [0.0, 0.2]},  # the Keras tutorial's CNNs overfit: softer targets help
    "augment.flip": {"choice": [False, True]},  # the cheapest augmentation for CIFAR
    "augment.translate": {"int": [0, 3]},  # pixels of random shift (a padded random crop)
}
SGD_SPACE: dict[str, Any] = {
    "lr": {"log_uniform": [0.15, 0.75]},  # 0.4x to 2x the fast recipes' 0.375 per 256 images
    "weight_decay": {"log_uniform": [5e-4, 3e-3]},  # around airbench's 1.33e-3 (coupled)
    "label_smoothing": {"uniform": [0.0, 0.3]},  # around airbench's 0.2
    "momentum": {"uniform": [0.8, 0.95]},  # around airbench's 0.85
    "augment.translate": {"int": [0, 3]},  # around airbench's 2
}
MUON_SPACE: dict[str, Any] = {
    **SGD_SPACE,  # the SGD part (biases, head) as in fast_sgd; the conv filters' own step:
    "muon_lr": {"log_uniform": [0.04, 0.2]},  # around 0.086 (0.043 and 0.17 measured worse)
}
DEFAULT_SPACES = {"base": ADAM_SPACE, "robust": ADAM_SPACE, "bn": ADAM_SPACE,
                  "fast": MUON_SPACE, "fast_small": MUON_SPACE, "quick": MUON_SPACE,
                  "fast_robust": MUON_SPACE,
                  "fast_sgd": SGD_SPACE}

PathLike = str | os.PathLike[str]


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched setting: `kind` is one of KINDS; `values` is (low, high) or the choices."""

    key: str
    kind: str
    values: tuple[Any, ...]

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        low, high = self.values
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.key, low, high, log=self.kind == "log_int")
        return trial.suggest_float(self.key, low, high, log=self.kind == "log_uniform")

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(type(value) is type(v) and value == v for v in self.values)
        low, high = self.values
        return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high

    def to_spec(self) -> dict[str, list[Any]]:
        return {self.kind: list(self.values)}


def read_space(space: dict[str, Any] | PathLike | None, recipe: str,
               base: TrainConfig | None = None) -> list[Param]:
    """The searched settings, checked: a mapping, a YAML/JSON file, or None (the recipe's default).

    Each key is a setting (`cl.make_config()` shows them); each value one of
    `{log_uniform: [low, high]}`, `{uniform: [low, high]}`, `{int: [low, high]}`,
    `{log_int: [low, high]}` or `{choice: [a, b, ...]}`.
    """
    where = ""
    if space is None:
        values = DEFAULT_SPACES.get(recipe, ADAM_SPACE)
    elif isinstance(space, dict):
        values = space
    else:
        where = f"{space}: "
        values = configuration.read_file(os.fspath(space))
    if not values:
        raise UserError(f"{where}the search space is empty: give at least one setting to search")
    base = base or configuration.base_config(recipe)
    params = []
    for key, spec in values.items():
        try:
            params.append(_param(str(key), spec, base))
        except UserError as exc:
            raise UserError(f"{where}{exc}") from None
    return params


def _param(key: str, spec: Any, base: TrainConfig) -> Param:
    kind_of_field = configuration.field_type(key)  # unknown keys: the did-you-mean error
    head = key.partition(".")[0]
    if key in NOT_SEARCHABLE or head in ("recipe", "data"):
        raise UserError(f"'{key}' cannot be searched: {NOT_SEARCHABLE.get(key) or NOT_SEARCHABLE[head]}")
    example = "{log_uniform: [1e-4, 1e-2]}, {uniform: [0, 0.2]}, {int: [0, 3]} or {choice: [a, b]}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(f"'{key}' needs one of {example}, got {spec!r} (fixed values go in --set)")
    kind, values = next(iter(spec.items()))
    if kind not in KINDS:
        raise UserError(f"'{key}': unknown kind '{kind}'{configuration.suggest(str(kind), KINDS)}; "
                        f"use {', '.join(KINDS)}")
    if not isinstance(values, list) or not values:
        raise UserError(f"'{key}': {kind} needs a list, e.g. {example}")
    if kind == "choice":
        for value in values:
            if not (value is None or isinstance(value, bool | int | float | str)):
                raise UserError(f"'{key}': choices must be numbers, strings, true/false or null, "
                                f"got {value!r}")
        values = [_typed(key, v, kind_of_field) for v in values]
        if len(set(map(repr, values))) != len(values):
            raise UserError(f"'{key}': the choices repeat a value: {values}")
    else:
        if len(values) != 2:
            raise UserError(f"'{key}': {kind} needs two numbers [low, high], got {values!r}")
        values = [_number(key, v, kind) for v in values]
        if not values[0] < values[1]:
            raise UserError(f"'{key}': {kind} needs low < high, got {values}")
        if kind.startswith("log") and values[0] <= 0:
            raise UserError(f"'{key}': {kind} needs a positive low end, got {values[0]}")
        if kind in ("uniform", "log_uniform") and _base_type(kind_of_field) is int:
            raise UserError(f"'{key}' is a whole number: use {{int: [{values[0]:g}, {values[1]:g}]}} "
                            "or {choice: [...]}")
        if _base_type(kind_of_field) not in (int, float, Any):
            raise UserError(f"'{key}' is a {configuration.type_name(kind_of_field)}: use {{choice: [...]}}")
        values = [_typed(key, v, kind_of_field) for v in values]
    for value in values:  # each end and choice must make a valid config on its own
        try:
            configuration.apply(base, {key: value})
        except UserError as exc:
            raise UserError(f"'{key}' = {value!r} is not a valid setting: {exc}") from None
    return Param(key, kind, tuple(values))


def _base_type(kind: Any) -> Any:
    args = [a for a in getattr(kind, "__args__", ()) if a is not type(None)]
    return args[0] if args and kind not in (int, float, str, bool) else kind


def _number(key: str, value: Any, kind: str) -> int | float:
    """A range end; YAML reads 1e-4 (no dot) as text, so numeric text is taken as a number."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"'{key}': {kind} needs numbers, got {value!r}")
    if kind in ("int", "log_int"):
        if float(value) != int(value):
            raise UserError(f"'{key}': {kind} needs whole numbers, got {value!r}")
        return int(value)
    return float(value)


def _typed(key: str, value: Any, kind: Any) -> Any:
    if isinstance(value, str) and _base_type(kind) in (int, float):
        with contextlib.suppress(ValueError):
            value = float(value)
            value = int(value) if _base_type(kind) is int and value == int(value) else value
    if kind is Any:  # model_kwargs.*: any value
        return value
    return configuration.check_value(key, value, kind)


def current(config: TrainConfig, key: str) -> Any:
    head, _, rest = key.partition(".")
    value = getattr(config, head)
    if head == "augment":
        return getattr(value, rest)
    if head == "model_kwargs":
        return value.get(rest)
    return value
