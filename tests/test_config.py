"""config.py: recipes, strict overrides (loud errors for unknown keys, wrong types, bad values), durations."""

from __future__ import annotations

import re

import pytest

from cifarlab.api import make_config
from cifarlab.config import RECIPES, TrainConfig, laid_out, parse_duration, parse_sets
from cifarlab.errors import UserError


def test_seed_recipes_match_the_notebooks() -> None:
    for name in ("base", "robust", "bn"):
        config = make_config(name)
        assert (config.optimizer, config.lr, config.batch_size, config.epochs) == ("adam", 1e-3, 64, 15)
    robust = make_config("robust").augment
    assert robust.flip and robust.rotation == 0.1 and robust.zoom == 0.1


def test_overrides_apply_and_none_is_a_value() -> None:
    config = make_config("quick", epochs=3)
    assert config.epochs == 3 and config.subset == 20_480 and config.lr == 1.5 * 256 / 1024
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
    assert make_config("base", batch_size=128).lr == 1e-3  # Adam: the Keras tutorial's lr stays


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600),
                                               ("1.5h", 5400), (" 2min ", 120)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "-5m", "0", "5d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UserError, match="budget"):
        parse_duration(text)


@pytest.mark.parametrize(("bad", "message"), [
    ({"optimizer": "adamx"}, "unknown optimizer 'adamx' .*did you mean 'adam"),
    ({"schedule": "cosin"}, "unknown schedule 'cosin' .*did you mean 'cosine'"),
    ({"schedule": "step"}, "needs step_every, the epochs between its drops"),
    ({"step_every": -1}, "step_every must be 0"),
    ({"step_factor": 1.0}, "in \\(0, 1\\)"),
    ({"plateau_factor": 0.0}, "in \\(0, 1\\)"),
    ({"plateau_patience": 0}, "plateau_patience must be at least 1"),
    ({"schedule": "plateau", "val_fraction": 0.0}, "watches the validation images, and .* leaves none"),
    ({"lr_end": 1.5}, "fractions of lr"),
    ({"class_weight": "balance"}, "did you mean 'balanced'"),
    ({"class_weight": 2}, "expects dict or str or none"),
    ({"class_weight": {"cat": -1}}, "weights are numbers >= 0"),
    ({"class_weight": {"cat": "heavy"}}, "weights are numbers >= 0"),
])
def test_new_settings_refuse_bad_values_in_one_line(bad: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        make_config("base", **bad)
    assert "\n" not in str(error.value)


def test_class_weight_spellings() -> None:
    assert make_config("base", class_weight="balanced").class_weight == "balanced"
    assert make_config("base", class_weight={0: 2, "dog": 0.5}).class_weight == {"0": 2.0, "dog": 0.5}
    assert parse_sets(["class_weight=balanced"]) == {"class_weight": "balanced"}
    assert parse_sets(['class_weight={"cat": 2}']) == {"class_weight": {"cat": 2}}
    assert make_config("base", **parse_sets(["class_weight.cat=2", "class_weight.dog=1.5"])
                       ).class_weight == {"cat": 2.0, "dog": 1.5}
    assert make_config("base", class_weight=None).class_weight is None
    config = make_config("base", class_weight={"cat": 3})
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_what_is_laid_out_for_the_runs_length() -> None:
    """Only runs whose lr does not depend on their length may be extended (--resume --epochs)."""
    for free in ({}, {"schedule": "step", "step_every": 3}, {"schedule": "plateau"}):
        assert laid_out(make_config("base", **free)) == ""
    for bound, words in [({"schedule": "cosine"}, "cosine schedule laid out for 15 epochs"),
                         ({"schedule": "onecycle"}, "onecycle"),
                         ({"warmup": 0.1}, "warm-up"), ({"lookahead": True}, "lookahead"),
                         ({"model": "fastnet_small", "low_res_share": 0.2}, "low-resolution")]:
        assert words in laid_out(make_config("base", **bound))


def test_label_mode_is_fine_or_coarse() -> None:
    assert make_config("base").label_mode == "fine"  # old config files, without it, read as fine
    assert TrainConfig.from_dict({"epochs": 2}).label_mode == "fine"
    assert make_config("fast", label_mode="coarse").label_mode == "coarse"
    with pytest.raises(UserError, match="unknown label_mode 'corse' .*\\(did you mean 'coarse'\\?\\)"):
        make_config("base", label_mode="corse")


@pytest.mark.parametrize(("keras", "ours"), [("validation_split", "val_fraction"), ("learning_rate", "lr"),
                                             ("batch", "batch_size"), ("epoch", "epochs"),
                                             ("patience", "early_stop")])
def test_keras_names_get_a_did_you_mean(keras: str, ours: str) -> None:
    with pytest.raises(UserError) as caught:
        make_config("base", **{keras: 1})
    message = str(caught.value)
    assert f"unknown setting '{keras}' (did you mean '{ours}'?)" in message
    assert "help(cl.TrainConfig) lists them all" in message and "the settings are" not in message


@pytest.mark.parametrize("changes, message", [
    ({"split_seed": -1}, "split_seed must be in 0.."),
    ({"seed": 2**64}, "seed must be in 0.."),
    ({"augment.translate": 40}, "augment.translate must be at most 16"),
    ({"clean_train_size": 0}, "clean_train_size must be at least 1"),
    ({"optimizer": "sgd", "momentum": 0.0}, "Nesterov's, which needs momentum above 0"),
    ({"muon_momentum": 5.0}, "muon_momentum must be in"),
    ({"lr_start": -5.0}, "lr_start and lr_end must not be negative"),
    ({"whiten_bias_epochs": -1}, "whiten_bias_epochs must be 0"),
])
def test_settings_that_cannot_train_are_refused_up_front(changes: dict[str, object], message: str) -> None:
    """Issue 22, item 11: each passed validation, then failed as a traceback once training
    started (split_seed=-1, translate=40) or after a whole epoch (clean_train_size=0)."""
    with pytest.raises(UserError, match=re.escape(message)):
        make_config("base", **changes)
