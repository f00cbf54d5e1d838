"""Recipes and config overrides: loud errors for unknown keys, wrong types and bad values."""

from __future__ import annotations

import math
import re

import pytest

from cifarlab.config import RECIPES, TrainConfig, make_config
from cifarlab.errors import UserError
from cifarlab.optim import lr_at


def test_seed_recipes_match_the_notebooks() -> None:
    for name in ("base", "robust", "bn"):
        config = make_config(name)
        assert (config.optimizer, config.lr, config.batch_size, config.epochs) == ("adam", 1e-3, 64, 15)
    robust = make_config("robust").augment
    assert robust.flip and robust.rotation == 0.1 and robust.zoom == 0.1


def test_overrides_apply_and_none_keeps() -> None:
    config = make_config("base", epochs=3, lr=None)
    assert config.epochs == 3 and config.lr == 1e-3


def test_loud_config_errors() -> None:
    with pytest.raises(UserError, match="unknown recipe 'resnet9000'"):
        make_config("resnet9000")
    with pytest.raises(UserError, match="unknown setting 'epochz' \\(did you mean 'epochs'\\?\\)"):
        make_config("base", epochz=3)
    with pytest.raises(UserError, match="expects int"):
        make_config("base", epochs="3")
    with pytest.raises(UserError, match="--epochs must be at least 1"):
        make_config("base", epochs=0)


def test_config_round_trips_through_dict() -> None:
    config = make_config("robust", seed=5)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_onecycle_schedule() -> None:
    config = make_config("base", lr=1.0)
    config.schedule, config.warmup = "onecycle", 0.2
    assert lr_at(config, 0.0) == 0.0
    assert lr_at(config, 0.2) == pytest.approx(1.0)
    assert lr_at(config, 0.6) == pytest.approx(0.5)
    assert lr_at(config, 1.0) == 0.0


def test_every_recipe_builds() -> None:
    assert set(RECIPES) >= {"base", "robust", "bn"}


def test_onecycle_with_floor_and_start() -> None:
    config = make_config("base", lr=2.0)
    config.schedule, config.warmup, config.lr_start, config.lr_end = "onecycle", 0.25, 0.2, 0.1
    assert lr_at(config, 0.0) == pytest.approx(0.4)
    assert lr_at(config, 0.25) == pytest.approx(2.0)
    assert lr_at(config, 1.0) == pytest.approx(0.2)
    assert lr_at(config, 0.625) == pytest.approx(1.1)


@pytest.mark.parametrize("changes, message", [
    ({"split_seed": -1}, "split_seed must be in 0.."),
    ({"seed": 2**64}, "--seed must be in 0.."),
    ({"augment.translate": 40}, "augment.translate must be at most 16"),
    ({"clean_train_size": 0}, "clean_train_size must be at least 1"),
    ({"optimizer": "sgd", "momentum": 0.0}, "Nesterov's, which needs momentum above 0"),
    ({"lr": math.inf}, "'lr' must be a finite number"),
    ({"augment.rotation": math.inf}, "'augment.rotation' must be a finite number"),
    ({"muon_momentum": 5.0}, "muon_momentum must be in"),
    ({"lr_start": -5.0}, "lr_start and lr_end must not be negative"),
    ({"whiten_bias_epochs": -1}, "whiten_bias_epochs must be 0"),
])
def test_settings_that_cannot_train_are_refused_up_front(changes: dict[str, object], message: str) -> None:
    """Issue 22, item 11: each passed validation, then failed as a traceback once training
    started (split_seed=-1, translate=40) or after a whole epoch (clean_train_size=0)."""
    with pytest.raises(UserError, match=re.escape(message)):
        make_config("base", **changes)
