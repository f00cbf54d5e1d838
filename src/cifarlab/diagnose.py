"""Diagnose a run from its metric history: overfitting, underfitting or good generalization.

The verdict is a stated rule over the last epoch, printed with its inputs (docs/diagnosis.md):

    gap = clean train accuracy - val accuracy
    overfitting     if gap > OVERFIT_GAP
    underfitting    else if clean train accuracy < LOW_ACCURACY and val accuracy < LOW_ACCURACY
    good generalization otherwise

The rule compares the *clean* train accuracy (eval mode, on a fixed train subset), not the running
one Keras prints: the running accuracy is measured with dropout and augmentation active and
averaged over an epoch of changing weights, so it understates the fit, and "val > train" can
happen with a model that fits its training images better than its validation ones.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

# The thresholds, with the reason beside each number.
OVERFIT_GAP = 0.05  # 5 points: ~5x the noise of two 5,000-image accuracies; the seed base CNN shows 11
LOW_ACCURACY = 0.60  # the seed base CNN passes 60% on CIFAR-10 val after 1 epoch: below it, not yet fit
RISING_EPOCHS = 3  # "still rising" compares val accuracy now with 3 epochs ago ...
RISING_DELTA = 0.01  # ... and needs a gain of more than 1 point (about the noise of one epoch)

VERDICTS = ("overfitting", "underfitting", "good generalization", "no validation")


@dataclass(frozen=True)
class Diagnosis:
    verdict: str  # one of VERDICTS
    reason: str  # the rule that fired, with its numbers
    advice: str
    epochs: int
    train_acc: float  # running, as Keras reports it
    train_acc_clean: float
    val_acc: float
    gap: float  # train_acc_clean - val_acc
    val_acc_change: float | None  # over the last RISING_EPOCHS epochs; None with one epoch
    still_rising: bool | None
    best_val_loss_epoch: int  # 0: no validation
    best_val_loss: float
    final_val_loss: float

    def lines(self) -> list[str]:
        """The verdict and its inputs, one fact per line, for the console and the report."""
        if self.verdict == "no validation":
            return [f"verdict: {self.verdict}: {self.reason}",
                    f"  clean train accuracy {self.train_acc_clean:.3f} (eval mode), running train "
                    f"accuracy {self.train_acc:.3f}", f"  advice: {self.advice}"]
        change = ("n/a (one epoch: no trend yet)" if self.val_acc_change is None
                  else f"{self.val_acc_change:+.3f} over the last {min(RISING_EPOCHS, self.epochs - 1)} "
                       f"epoch(s) ({'still rising' if self.still_rising else 'flat or falling'})")
        rose = self.final_val_loss - self.best_val_loss
        return [
            f"verdict: {self.verdict}: {self.reason}",
            f"  clean train accuracy {self.train_acc_clean:.3f} (eval mode), val accuracy "
            f"{self.val_acc:.3f}, gap {self.gap:+.3f} (threshold {OVERFIT_GAP:.2f})",
            f"  running train accuracy {self.train_acc:.3f} (as Keras reports it: measured while "
            "training, dropout and augmentation on; not used by the rule)",
            f"  val accuracy change: {change}",
            f"  val loss lowest at epoch {self.best_val_loss_epoch} of {self.epochs} "
            f"({self.best_val_loss:.4f}; final {self.final_val_loss:.4f}, {rose:+.4f})",
            f"  advice: {self.advice}",
        ]

    def to_dict(self) -> dict[str, Any]:
        thresholds = {"overfit_gap": OVERFIT_GAP, "low_accuracy": LOW_ACCURACY,
                      "rising_epochs": RISING_EPOCHS, "rising_delta": RISING_DELTA}
        values = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                  for k, v in self.__dict__.items()}  # JSON has no NaN
        return {**values, "thresholds": thresholds}

    def __repr__(self) -> str:  # the verdict, then one fact a line: what report and compare show
        return "\n".join(["Diagnosis:", *(f"  {line.strip()}" for line in self.lines())])

    def _repr_html_(self) -> str:
        first, *facts = self.lines()
        items = "".join(f"<li>{html.escape(fact.strip())}</li>" for fact in facts)
        return f"<div><b>{html.escape(first)}</b><ul>{items}</ul></div>"


def diagnose(history: list[dict[str, float]]) -> Diagnosis:
    """Apply the rule to a metric history (rows of metrics.csv, oldest first)."""
    if not history:
        raise ValueError("an empty metric history has nothing to diagnose")
    last = history[-1]
    clean, val = last["train_acc_clean"], last["val_acc"]
    gap = round(clean - val, 6)  # metrics.csv keeps 6 digits; this drops float noise (0.05000000000000004)
    if not math.isfinite(val):
        return Diagnosis(
            verdict="no validation", reason="the run kept no validation images (--val-fraction 0), "
            "so there is no gap to measure", advice="judge the recipe by a run that validates, or "
            "evaluate this model on a test split: cifarlab evaluate RUN --data SRC --split test",
            epochs=len(history), train_acc=last["train_acc"], train_acc_clean=clean, val_acc=val,
            gap=math.nan, val_acc_change=None, still_rising=None, best_val_loss_epoch=0,
            best_val_loss=math.nan, final_val_loss=math.nan)
    change, rising = val_acc_trend(history)
    best = min(history, key=lambda row: row["val_loss"])
    if gap > OVERFIT_GAP:
        verdict = "overfitting"
        reason = f"clean train accuracy exceeds val accuracy by {gap:.3f} > {OVERFIT_GAP:.2f}"
        advice = ("add regularisation (augmentation, dropout, weight decay) or more data, or stop "
                  "at the epoch of the lowest val loss")
    elif clean < LOW_ACCURACY and val < LOW_ACCURACY:
        verdict = "underfitting"
        reason = (f"clean train accuracy {clean:.3f} and val accuracy {val:.3f} are both below "
                  f"{LOW_ACCURACY:.2f}")
        advice = ("val accuracy is still rising: train for more epochs" if rising is not False
                  else "val accuracy has stopped rising: try a bigger model or another learning rate")
    else:
        verdict = "good generalization"
        reason = (f"gap {gap:.3f} <= {OVERFIT_GAP:.2f}, and accuracy reaches {LOW_ACCURACY:.2f} "
                  f"(clean train {clean:.3f}, val {val:.3f})")
        advice = ("val accuracy is still rising: more epochs may help" if rising
                  else "keep this recipe; compare it with others by val accuracy")
    return Diagnosis(
        verdict=verdict, reason=reason, advice=advice, epochs=len(history),
        train_acc=last["train_acc"], train_acc_clean=clean, val_acc=val, gap=gap,
        val_acc_change=change, still_rising=rising, best_val_loss_epoch=int(best["epoch"]),
        best_val_loss=best["val_loss"], final_val_loss=last["val_loss"])


def val_acc_trend(history: list[dict[str, float]]) -> tuple[float | None, bool | None]:
    """Change of val accuracy over the last RISING_EPOCHS epochs, and whether that is still rising."""
    if len(history) < 2:
        return None, None
    change = round(history[-1]["val_acc"] - history[-1 - min(RISING_EPOCHS, len(history) - 1)]["val_acc"], 6)
    return change, change > RISING_DELTA
