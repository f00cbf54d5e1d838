"""The diagnosis rule on synthetic metric histories: one history per verdict, and its edges."""

from __future__ import annotations

import json

import pytest

from cifarlab.diagnose import LOW_ACCURACY, OVERFIT_GAP, diagnose


def history(clean: list[float], val: list[float], running: list[float] | None = None,
            val_loss: list[float] | None = None) -> list[dict[str, float]]:
    """Metric rows as metrics.csv holds them; only the columns the rule reads need to be realistic."""
    running = running or [c - 0.03 for c in clean]
    val_loss = val_loss or [2.0 - v for v in val]
    return [{"epoch": i + 1, "train_loss": 2.0 - running[i], "train_acc": running[i],
             "train_acc_clean": clean[i], "val_loss": val_loss[i], "val_acc": val[i], "lr": 1e-3,
             "seconds": 30.0, "train_seconds": 25.0} for i in range(len(clean))]


def test_overfitting_like_the_seed_base_cnn() -> None:
    """The seed's base CNN: train 80% / val 69%, val loss lowest mid-run and rising after."""
    d = diagnose(history(clean=[0.60, 0.70, 0.75, 0.78, 0.80], val=[0.58, 0.65, 0.68, 0.69, 0.69],
                         val_loss=[1.10, 0.95, 0.90, 0.93, 1.00]))
    assert d.verdict == "overfitting"
    assert d.gap == pytest.approx(0.11)
    assert d.best_val_loss_epoch == 3
    assert d.final_val_loss - d.best_val_loss == pytest.approx(0.10)
    assert "0.110 > 0.05" in d.reason


def test_underfitting_still_rising() -> None:
    d = diagnose(history(clean=[0.30, 0.36, 0.40, 0.44], val=[0.29, 0.35, 0.39, 0.43]))
    assert d.verdict == "underfitting"
    assert d.still_rising is True
    assert d.val_acc_change == pytest.approx(0.43 - 0.29)
    assert "train for more epochs" in d.advice


def test_underfitting_flat_gets_other_advice() -> None:
    d = diagnose(history(clean=[0.40, 0.42, 0.42, 0.42, 0.42], val=[0.40, 0.41, 0.41, 0.415, 0.41]))
    assert d.verdict == "underfitting"
    assert d.still_rising is False
    assert "bigger model" in d.advice


def test_good_generalization() -> None:
    d = diagnose(history(clean=[0.60, 0.68, 0.72, 0.74], val=[0.59, 0.66, 0.70, 0.72]))
    assert d.verdict == "good generalization"
    assert d.gap == pytest.approx(0.02)


def test_val_above_running_train_accuracy_is_judged_on_clean_accuracy() -> None:
    """With dropout and augmentation the Keras train accuracy sits below val; the rule ignores it."""
    d = diagnose(history(clean=[0.62, 0.70, 0.73], val=[0.61, 0.69, 0.71], running=[0.50, 0.61, 0.66]))
    assert d.train_acc < d.val_acc
    assert d.verdict == "good generalization"
    assert "not used by the rule" in "\n".join(d.lines())


def test_a_large_gap_is_overfitting_even_when_accuracy_is_low() -> None:
    d = diagnose(history(clean=[0.35, 0.50], val=[0.30, 0.38]))
    assert d.verdict == "overfitting"


def test_thresholds_are_strict() -> None:
    at_gap = diagnose(history(clean=[0.75], val=[0.75 - OVERFIT_GAP]))
    assert at_gap.verdict == "good generalization"
    at_low = diagnose(history(clean=[LOW_ACCURACY], val=[LOW_ACCURACY - 0.01]))
    assert at_low.verdict == "good generalization"


def test_one_epoch_has_no_trend() -> None:
    d = diagnose(history(clean=[0.30], val=[0.29]))
    assert d.val_acc_change is None and d.still_rising is None
    assert d.verdict == "underfitting"
    assert "train for more epochs" in d.advice
    assert "no trend yet" in "\n".join(d.lines())


def test_trend_looks_back_three_epochs() -> None:
    d = diagnose(history(clean=[0.3, 0.3, 0.5, 0.5, 0.5, 0.5], val=[0.3, 0.3, 0.5, 0.5, 0.5, 0.505]))
    assert d.val_acc_change == pytest.approx(0.005)
    assert d.still_rising is False


def test_epochs_without_evaluation_are_passed_over() -> None:
    """eval_every: skipped epochs hold NaN; the verdict reads the last epoch, the trend and the
    lowest val loss the measured ones."""
    nan = float("nan")
    d = diagnose(history(clean=[nan, 0.5, nan, 0.6, nan, 0.7], val=[nan, 0.49, nan, 0.58, nan, 0.66],
                         val_loss=[nan, 1.2, nan, 1.1, nan, 1.15]))
    assert d.verdict == "good generalization" and d.gap == pytest.approx(0.04)
    assert d.val_acc_change == pytest.approx(0.66 - 0.49)  # epoch 6 against 2 (<= 6 - 3)
    assert d.still_rising is True and d.best_val_loss_epoch == 4
    only_last = diagnose(history(clean=[nan, nan, 0.7], val=[nan, nan, 0.6]))
    assert only_last.verdict == "overfitting" and only_last.gap == pytest.approx(0.1)
    assert only_last.val_acc_change is None and only_last.still_rising is None
    assert only_last.best_val_loss_epoch == 3


def test_lines_print_the_inputs_and_to_dict_is_json() -> None:
    d = diagnose(history(clean=[0.6, 0.8], val=[0.6, 0.69]))
    text = "\n".join(d.lines())
    for expected in ("verdict: overfitting", "clean train accuracy 0.800", "val accuracy 0.690",
                     "gap +0.110", "threshold 0.05", "val loss lowest at epoch 2 of 2"):
        assert expected in text
    record = json.loads(json.dumps(d.to_dict()))
    assert record["verdict"] == "overfitting"
    assert record["thresholds"]["overfit_gap"] == OVERFIT_GAP


def test_empty_history_is_an_error() -> None:
    with pytest.raises(ValueError):
        diagnose([])
