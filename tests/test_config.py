"""config.py: recipes, strict overrides (loud errors for unknown keys, wrong types, bad values), durations."""

from __future__ import annotations

import pytest

from cifarlab.api import make_config
from cifarlab.config import RECIPES, TrainConfig, parse_duration
from cifarlab.errors import UserError


def test_seed_recipes_match_the_notebooks() -> None:
    for name in ("base", "robust", "bn"):
        config = make_config(name)
        assert (config.optimizer, config.lr, config.batch_size, config.epochs) == ("adam", 1e-3, 64, 15)
    robust = make_config("robust").augment
    assert robust.flip and robust.rotation == 0.1 and robust.zoom == 0.1


def test_overrides_apply_and_none_is_a_value() -> None:
    config = make_config("quick", epochs=3)
    assert config.epochs == 3 and config.subset == 22_500 and config.lr == 1.5 * 256 / 1024
    assert make_config("quick", subset=None).subset is None  # None: a value ("no subset")
    with pytest.raises(UserError, match="setting 'lr' expects float, got None"):
        make_config("base", lr=None)


def test_loud_config_errors() -> None:
    with pytest.raises(UserError, match="unknown recipe 'resnet9000'"):
        make_config("resnet9000")
    with pytest.raises(UserError, match="unknown setting 'epochz' \\(did you mean 'epochs'\\?\\)"):
        make_config("base", epochz=3)
    with pytest.raises(UserError, match="expects int"):
        make_config("base", epochs="3")
    with pytest.raises(UserError, match="^epochs must be at least 1"):  # from Python: a keyword
        make_config("base", epochs=0)


def test_config_round_trips_through_dict() -> None:
    config = make_config("robust", seed=5)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_every_recipe_builds() -> None:
    assert set(RECIPES) >= {"base", "robust", "bn"}


def test_fast_settings_are_airbench_per_image() -> None:
    fast = make_config("fast_sgd")
    assert fast.model == "fastnet" and fast.optimizer == "sgd" and fast.lookahead and fast.tta
    assert fast.lr * 1024 / fast.batch_size == pytest.approx(1.5)  # airbench's 11.5 / 7.67
    assert fast.lr * fast.weight_decay * 1024 / fast.batch_size == pytest.approx(0.0153 * 1024
                                                                                / 7850, rel=1e-3)
    assert RECIPES["fast_small"].settings["model"] == "fastnet_small"
    muon = make_config("fast")  # airbench94_muon: the same SGD for all but the conv filters
    assert (muon.optimizer, muon.epochs, muon.lookahead) == ("muon", 8, False)
    assert (muon.lr, muon.weight_decay) == (fast.lr, fast.weight_decay)


def test_renamed_recipes_still_read() -> None:
    assert make_config("fast_muon") == make_config("fast")


def test_sgd_lr_follows_the_batch_size_unless_given() -> None:
    assert make_config("fast", batch_size=512).lr == pytest.approx(0.75)
    assert make_config("fast", batch_size=512, lr=0.1).lr == 0.1
    assert make_config("base", batch_size=128).lr == 1e-3  # Adam: the seed's lr stays


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600),
                                               ("1.5h", 5400), (" 2min ", 120)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "-5m", "0", "5d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UserError, match="budget"):
        parse_duration(text)


@pytest.mark.parametrize(("keras", "ours"), [("validation_split", "val_fraction"), ("learning_rate", "lr"),
                                             ("batch", "batch_size"), ("epoch", "epochs"),
                                             ("patience", "early_stop")])
def test_keras_names_get_a_did_you_mean(keras: str, ours: str) -> None:
    with pytest.raises(UserError) as caught:
        make_config("base", **{keras: 1})
    message = str(caught.value)
    assert f"unknown setting '{keras}' (did you mean '{ours}'?)" in message
    assert "help(cl.TrainConfig) lists them all" in message and "the settings are" not in message
