"""The diagnosis rule on crafted metric histories: each verdict, its boundaries, and the sample
sizes, class counts and epoch counts that move them. All instant; one real short run is `slow`."""

from __future__ import annotations

import doctest
import json
import math

import pytest

from cifarlab import diagnose as diagnosis_module
from cifarlab.diagnose import (
    DIVERGE_FACTOR,
    MAX_GAP_NOISE,
    MIN_GAP,
    RISING_DELTA,
    VERDICTS,
    Z,
    diagnose,
    sizes_of,
)
from cifarlab.history import evaluated

FULL = {"val_images": 5000, "clean_images": 5000, "num_classes": 10}  # the shared split


def history(clean: list[float], val: list[float], running: list[float] | None = None,
            val_loss: list[float] | None = None, train_loss: list[float] | None = None,
            lr: float = 1e-3) -> list[dict[str, float]]:
    """Metric rows as metrics.csv holds them. NaN in `val` is an epoch without evaluation (its val
    loss and clean accuracy are NaN too, as the trainer writes them)."""
    running = running or [c - 0.03 if math.isfinite(c) else 0.5 for c in clean]
    val_loss = val_loss or [2.0 - v for v in val]
    train_loss = train_loss or [2.0 - r for r in running]
    return [{"epoch": i + 1, "train_loss": train_loss[i], "train_acc": running[i],
             "train_acc_clean": clean[i], "val_loss": val_loss[i], "val_acc": val[i], "lr": lr,
             "seconds": 30.0, "train_seconds": 25.0} for i in range(len(clean))]


# ---------------------------------------------------------------------------------------------
# The cases of issue 21, with the sizes the runs had


def test_base_15_epochs_on_the_full_split_is_overfitting() -> None:
    """The classic: clean train climbs to 95%, val stalls near 71%, val loss lowest at epoch 5."""
    clean = [0.62, 0.70, 0.75, 0.79, 0.82, 0.85, 0.87, 0.89, 0.90, 0.91, 0.92, 0.93, 0.94, 0.945, 0.95]
    val = [0.60, 0.65, 0.68, 0.70, 0.71, 0.71, 0.72, 0.71, 0.72, 0.71, 0.72, 0.71, 0.71, 0.72, 0.71]
    loss = [1.15, 1.0, 0.92, 0.88, 0.86, 0.88, 0.92, 0.98, 1.05, 1.1, 1.18, 1.25, 1.3, 1.37, 1.45]
    d = diagnose(history(clean, val, val_loss=loss), **FULL)
    assert d.verdict == "overfitting"
    assert d.val_loss_turned and d.best_val_loss_epoch == 5
    assert "stop at epoch 5" in d.advice
    assert d.gap == pytest.approx(0.24)
    assert d.gap_threshold == MIN_GAP  # 5,000 images a side: the noise is under the 5-point floor


def test_base_on_1800_images_3_epochs_still_rising_is_still_learning() -> None:
    """The issue's first case: gap 0.056 on 250 val images, val +0.105 and loss lowest at the end."""
    d = diagnose(history([0.33, 0.43, 0.491], [0.33, 0.38, 0.435], val_loss=[1.85, 1.70, 1.60]),
                 val_images=250, clean_images=1800, num_classes=10)
    assert d.verdict == "still learning"
    assert d.still_rising is True and d.val_loss_turned is False
    assert "train longer" in d.advice
    assert d.gap_threshold > MIN_GAP  # 250 val images: the gap's noise is over 5 points
    assert d.gap_threshold == pytest.approx(Z * math.hypot(math.sqrt(0.491 * 0.509 / 1800),
                                                           math.sqrt(0.435 * 0.565 / 250)), abs=1e-6)


def test_own_net_after_2_epochs_at_val_040_still_rising_is_not_overfitting() -> None:
    d = diagnose(history([0.36, 0.47], [0.31, 0.40], val_loss=[1.9, 1.65]), **FULL)
    assert d.verdict == "still learning"
    assert d.val_acc_change == pytest.approx(0.09)


@pytest.mark.parametrize("clean", [0.26, 0.31])  # 0.31: the real run's, a gap of 0.11 that counts
def test_one_epoch_ablation_at_20_percent_is_underfitting_not_overfitting(clean: float) -> None:
    """Notebook 03's 1-epoch ablation: 500 train images, 250 val, 20% val accuracy. Far from
    fitting its training images, whatever its gap: one epoch draws no curve to judge a gap on."""
    d = diagnose(history([clean], [0.20]), val_images=250, clean_images=500, num_classes=10)
    assert d.verdict == "underfitting"
    assert d.val_acc_change is None and "one evaluated epoch" in d.advice


def test_one_epoch_with_a_large_gap_is_not_enough_evidence() -> None:
    d = diagnose(history([0.70], [0.50]), **FULL)
    assert d.verdict == "not enough evidence"
    assert "one evaluated epoch" in d.reason and "more epochs" in d.advice


def test_a_diverged_loss_names_the_lr() -> None:
    """`--lr 1e6`: a train loss of 1.4e32 at chance accuracy was called underfitting."""
    d = diagnose(history([0.1], [0.1], train_loss=[1.40403374426e32], lr=1e6), **FULL)
    assert d.verdict == "diverged"
    assert "1e+06" in d.advice and "lr-find" in d.advice
    assert d.diverged_epoch == 1
    assert json.loads(json.dumps(d.to_dict()))["gap"] is None  # NaN is no JSON


def test_a_non_finite_loss_in_any_epoch_is_diverged() -> None:
    rows = history([0.5, 0.6, 0.1], [0.5, 0.55, 0.1], train_loss=[1.5, 1.2, math.nan])
    assert diagnose(rows, **FULL).verdict == "diverged"
    rows = history([0.5, 0.6], [0.5, 0.55], val_loss=[1.5, math.inf])
    assert "val loss became inf" in diagnose(rows, **FULL).reason


def test_divergence_is_measured_against_a_uniform_guess() -> None:
    """ln(100) x 10 = 46: a loss of 30 is bad but not diverged with 100 classes; it is with 2."""
    rows = history([0.02, 0.02], [0.02, 0.02], train_loss=[30.0, 30.0])
    assert diagnose(rows, val_images=5000, clean_images=5000, num_classes=100).verdict != "diverged"
    assert diagnose(rows, val_images=5000, clean_images=5000, num_classes=2).verdict == "diverged"
    assert DIVERGE_FACTOR * math.log(2) < 30.0 < DIVERGE_FACTOR * math.log(100)


def test_robust_with_a_small_flat_gap_is_good_generalization() -> None:
    d = diagnose(history([0.60, 0.66, 0.70, 0.72, 0.73, 0.735], [0.59, 0.65, 0.68, 0.70, 0.71, 0.712]),
                 **FULL)
    assert d.verdict == "good generalization" and d.still_rising
    assert "more epochs may help" in d.advice
    flat = diagnose(history([0.60, 0.66, 0.70, 0.72, 0.725, 0.725, 0.726],
                            [0.59, 0.65, 0.68, 0.70, 0.705, 0.705, 0.706]), **FULL)
    assert flat.verdict == "good generalization" and not flat.still_rising
    assert "keep this recipe" in flat.advice


# ---------------------------------------------------------------------------------------------
# Boundaries: the noise, the curve, chance


def test_the_same_gap_is_overfitting_on_5000_val_images_but_not_on_150() -> None:
    clean, val = [0.80, 0.85, 0.86, 0.86], [0.76, 0.79, 0.80, 0.80]
    loss = [0.8, 0.7, 0.72, 0.80]
    assert diagnose(history(clean, val, val_loss=loss), **FULL).verdict == "overfitting"
    small = diagnose(history(clean, val, val_loss=loss), val_images=150, clean_images=5000,
                     num_classes=10)
    assert small.gap < small.gap_threshold
    assert small.verdict == "good generalization"


def test_too_few_val_images_is_not_enough_evidence() -> None:
    d = diagnose(history([0.9, 0.95, 0.99], [0.5, 0.5, 0.5], val_loss=[1.0, 1.2, 1.5]),
                 val_images=80, clean_images=5000, num_classes=10)
    assert d.verdict == "not enough evidence"
    assert d.evidence_noise is not None and d.evidence_noise > MAX_GAP_NOISE
    assert "validate on more images" in d.advice
    # the evidence depends on the sizes alone: 120 val images are enough
    assert diagnose(history([0.9, 0.95, 0.99], [0.5, 0.5, 0.5], val_loss=[1.0, 1.2, 1.5]),
                    val_images=120, clean_images=5000, num_classes=10).verdict == "overfitting"


def test_rising_val_with_a_turned_val_loss_is_overfitting() -> None:
    """Val accuracy creeps up while val loss climbs well past its noise: the curve has turned."""
    d = diagnose(history([0.7, 0.8, 0.9, 0.95], [0.60, 0.63, 0.65, 0.67], val_loss=[1.0, 0.95, 1.1, 1.3]),
                 **FULL)
    assert d.still_rising is True and d.val_loss_turned is True
    assert d.verdict == "overfitting"


def test_val_loss_within_its_noise_of_the_minimum_has_not_turned() -> None:
    """On 250 images a val loss of 1.60 is known to about +-0.3: 1.65 after 1.60 is no turn."""
    rows = history([0.40, 0.50, 0.60], [0.35, 0.42, 0.48], val_loss=[1.8, 1.60, 1.65])
    d = diagnose(rows, val_images=250, clean_images=5000, num_classes=10)
    assert d.val_loss_noise is not None and d.val_loss_noise > 0.05
    assert not d.val_loss_turned and d.verdict == "still learning"
    big = diagnose(rows, **{**FULL, "val_images": 500_000})  # the same rise on a huge val set
    assert big.val_loss_turned and big.verdict == "overfitting"


def test_flat_val_while_the_gap_grows_is_overfitting_without_a_loss_turn() -> None:
    d = diagnose(history([0.80, 0.85, 0.90, 0.95], [0.70, 0.705, 0.70, 0.705],
                         val_loss=[0.90, 0.89, 0.89, 0.885]), **FULL)
    assert not d.val_loss_turned and d.still_rising is False
    assert d.gap_change is not None and d.gap_change > 0
    assert d.verdict == "overfitting"
    assert "stop at epoch" not in d.advice  # no lowest-loss epoch to stop at


def test_a_gap_with_a_curve_that_neither_turned_nor_rose_is_not_enough_evidence() -> None:
    """Val flat within its noise, the gap steady, val loss at its lowest: nothing has turned."""
    d = diagnose(history([0.80, 0.82, 0.83], [0.70, 0.71, 0.715], val_loss=[0.95, 0.92, 0.91]),
                 val_images=250, clean_images=5000, num_classes=10)
    assert d.gap > d.gap_threshold and d.still_rising is False and not d.val_loss_turned
    assert d.verdict == "not enough evidence"
    assert "neither turned nor kept rising" in d.reason and "more epochs" in d.advice


def test_the_real_own_net_on_250_val_images_is_underfitting_not_overfitting() -> None:
    """Notebook 02's SmallVGG, 5,000 train images, 2 epochs, 250 val: val +0.020 within its
    noise (0.061), val loss at its lowest. The old rule said overfitting (gap 0.080)."""
    d = diagnose(history([0.4244, 0.4476], [0.348, 0.368], val_loss=[1.69893, 1.65477]),
                 val_images=250, clean_images=5000, num_classes=10)
    assert d.verdict == "underfitting"
    assert "no more than its noise" in d.advice and "more epochs" in d.advice


def test_rising_is_judged_against_the_val_noise() -> None:
    """+3 points is a trend on 5,000 images, noise on 250 (2 SE at 40% = 0.062)."""
    rows = history([0.50, 0.55, 0.60], [0.37, 0.38, 0.40], val_loss=[1.7, 1.65, 1.6])
    assert diagnose(rows, **FULL).still_rising is True
    small = diagnose(rows, val_images=250, clean_images=5000, num_classes=10)
    assert small.still_rising is False and small.rise_threshold > 0.06


def test_thresholds_are_strict() -> None:
    at_gap = diagnose(history([0.75, 0.80], [0.75, 0.80 - MIN_GAP], val_loss=[1.0, 1.2]), **FULL)
    assert at_gap.verdict == "good generalization"
    flat = diagnose(history([0.5, 0.5], [0.5, 0.5 + RISING_DELTA]), val_images=None)
    assert flat.still_rising is False


@pytest.mark.parametrize(("classes", "clean", "verdict"), [
    (2, 0.70, "underfitting"),  # 2 classes: chance 0.5, fitted from 0.75
    (10, 0.70, "good generalization"),  # 10 classes: fitted from 0.55
    (100, 0.52, "good generalization"),  # 100 classes: fitted from 0.505
    (10, 0.52, "underfitting"),
])
def test_underfitting_is_judged_against_chance(classes: int, clean: float, verdict: str) -> None:
    rows = history([clean - 0.01, clean, clean], [clean - 0.02, clean - 0.01, clean - 0.01],
                   val_loss=[1.0, 0.99, 0.99])
    d = diagnose(rows, val_images=5000, clean_images=5000, num_classes=classes)
    assert d.verdict == verdict
    assert d.chance == pytest.approx(1 / classes)
    assert d.fit_level == pytest.approx(1 / classes + 0.5 * (1 - 1 / classes))


def test_val_accuracy_at_chance_is_underfitting() -> None:
    d = diagnose(history([0.9, 0.9, 0.9], [0.1, 0.1, 0.1], val_loss=[2.3, 2.3, 2.3]),
                 val_images=5000, clean_images=5000, num_classes=10)
    assert d.verdict == "overfitting"  # a huge gap comes first: it memorised
    d = diagnose(history([0.11, 0.1, 0.105], [0.1, 0.1, 0.102], val_loss=[2.3, 2.3, 2.3]),
                 val_images=5000, clean_images=5000, num_classes=10)
    assert d.verdict == "underfitting" and "chance" in d.reason


def test_underfitting_flat_gets_other_advice_than_rising() -> None:
    flat = diagnose(history([0.40, 0.42, 0.42, 0.42, 0.42], [0.40, 0.41, 0.41, 0.415, 0.41],
                            val_loss=[1.7, 1.68, 1.68, 1.67, 1.68]), **FULL)
    assert flat.verdict == "underfitting" and "bigger model" in flat.advice
    rising = diagnose(history([0.30, 0.36, 0.40, 0.44], [0.29, 0.35, 0.39, 0.43]), **FULL)
    assert rising.verdict == "still learning" and "train longer" in rising.advice


def test_the_running_train_accuracy_is_not_used() -> None:
    """With dropout and augmentation the Keras train accuracy sits below val; the rule ignores it."""
    d = diagnose(history([0.62, 0.70, 0.73], [0.61, 0.69, 0.71], running=[0.50, 0.61, 0.66]), **FULL)
    assert d.train_acc < d.val_acc
    assert d.verdict == "good generalization"
    assert "not used by the rule" in "\n".join(d.lines())


# ---------------------------------------------------------------------------------------------
# Epochs without evaluation, missing sizes, and what the diagnosis shows


def test_epochs_without_evaluation_are_left_out() -> None:
    """eval_every=2: odd epochs have NaN val cells; the trend runs over evaluated epochs."""
    nan = math.nan
    rows = history([nan, 0.5, nan, 0.6, nan, 0.65, nan], [nan, 0.45, nan, 0.55, nan, 0.62, nan],
                   val_loss=[nan, 1.5, nan, 1.3, nan, 1.2, nan])
    assert len(evaluated(rows)) == 3
    d = diagnose(rows, **FULL)
    assert d.evaluated_epochs == 3 and d.epochs == 7 and d.last_epoch == 6
    assert d.val_acc == pytest.approx(0.62) and d.val_acc_change == pytest.approx(0.17)
    assert d.best_val_loss_epoch == 6
    assert d.verdict == "good generalization" and d.still_rising
    assert "epoch 6, the last evaluated of 7" in "\n".join(d.lines())


def test_without_sizes_the_noise_is_not_judged() -> None:
    d = diagnose(history([0.6, 0.8], [0.6, 0.69], val_loss=[1.0, 1.1]))
    assert d.gap_noise is None and d.gap_threshold == MIN_GAP and d.fit_level is None
    assert d.verdict == "overfitting"
    assert "noise not judged" in "\n".join(d.lines())


def test_no_validation() -> None:
    d = diagnose(history([0.6, 0.8], [math.nan, math.nan], val_loss=[math.nan, math.nan]), **FULL)
    assert d.verdict == "no validation"
    assert json.loads(json.dumps(d.to_dict()))["val_acc"] is None


def test_lines_show_every_input_and_to_dict_is_json() -> None:
    d = diagnose(history([0.6, 0.8], [0.6, 0.69], val_loss=[1.0, 1.1]), val_images=1000,
                 clean_images=2000, num_classes=10)
    text = "\n".join(d.lines())
    for expected in ("verdict: ", "clean train accuracy 0.800 on 2,000 images", "val accuracy 0.690 on "
                     "1,000 images", "gap +0.110", "2 standard errors", "val loss lowest at epoch 1 of 2",
                     "over the last 1 evaluated epoch (", "halfway from chance (0.100, 10 classes)",
                     "evidence: "):
        assert expected in text, expected
    record = json.loads(json.dumps(d.to_dict()))
    assert record["verdict"] in VERDICTS
    assert record["val_images"] == 1000 and record["thresholds"]["min_gap"] == MIN_GAP


def test_sizes_come_from_config_json() -> None:
    record = {"config": {"clean_train_size": 5000}, "classes": list("abcdefghij"),
              "train_images": 1800, "val_images": 250}
    assert sizes_of(record) == {"val_images": 250, "clean_images": 1800, "num_classes": 10}
    record["train_images"] = 45000
    assert sizes_of(record)["clean_images"] == 5000
    assert sizes_of({}) == {"val_images": None, "clean_images": None, "num_classes": None}


def test_empty_history_is_an_error() -> None:
    with pytest.raises(ValueError):
        diagnose([])


def test_the_module_example_runs() -> None:
    assert doctest.testmod(diagnosis_module).failed == 0
