"""The diagnosis: what a run's curves say, by a stated rule, printed with every number it used.

The rule reads the epochs of a metric history that were evaluated (an epoch without evaluation
has empty val cells) and the sizes of the samples behind its accuracies, so it holds on a laptop
subset of 250 validation images as on the full 5,000, after 2 epochs as after 50
(docs/diagnosis.md has the rule as a table, with the reason beside every number):

    diverged             the train loss is not a number, or above DIVERGE_FACTOR x a uniform guess's
    no validation        no epoch has a val accuracy (--val-fraction 0)
    not enough evidence  too few val images to measure a gap to MAX_GAP_NOISE, or a fitted model
                         with a gap whose curve has neither turned nor kept rising (one epoch:
                         no curve yet)
    still learning       val accuracy still rising beyond its noise and val loss at (or within its
                         noise of) its minimum, with a gap or a fit that would otherwise decide
    overfitting          the gap beyond its noise, and the val curve has turned: val loss up from
                         its minimum beyond its noise, or val accuracy flat while the gap grows
    underfitting         clean train accuracy less than halfway from chance to 100%
    good generalization  otherwise: the gap within its noise and the training images fitted

The gap is clean train accuracy minus val accuracy: the *clean* train accuracy (eval mode, on a
fixed train sample), not the running one Keras prints, which is measured with dropout and
augmentation on while the weights change, so it understates the fit.

    >>> from cifarlab.diagnose import diagnose
    >>> rows = [{"epoch": e, "train_loss": 2.0 - v, "train_acc": c - 0.03, "train_acc_clean": c,
    ...          "val_loss": 1.9 - v, "val_acc": v} for e, c, v in [(1, .33, .30), (2, .43, .38),
    ...                                                             (3, .49, .43)]]
    >>> diagnose(rows, val_images=250, clean_images=1800, num_classes=10).verdict
    'still learning'
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cifarlab.history import evaluated, is_number
from cifarlab.text import plural

# The numbers of the rule, with the reason beside each (docs/diagnosis.md says more).
Z = 2.0  # "beyond its noise": more than 2 standard errors (a 1-in-40 chance from noise alone)
MIN_GAP = 0.05  # a gap under 5 points is not worth acting on, however exactly it is measured
MAX_GAP_NOISE = 0.10  # the gap known only to ±10 points (2 SE at 50%: < ~100 val images): no verdict
RISING_EPOCHS = 3  # "still rising" compares val accuracy now with 3 evaluations ago ...
RISING_DELTA = 0.01  # ... and needs more than 1 point, and more than 2 SE of one val accuracy
FIT_SKILL = 0.5  # fitted: clean train accuracy at least halfway from chance (1/classes) to 100%
LOSS_SPREAD = 1.5  # per-image cross-entropy's standard deviation / its mean (measured 0.3 to 2.1)
DIVERGE_FACTOR = 10.0  # diverged: train loss above 10 x ln(classes), a uniform guess's loss

VERDICTS = ("diverged", "no validation", "not enough evidence", "still learning", "overfitting",
            "underfitting", "good generalization")


@dataclass(frozen=True)
class Diagnosis:
    """The verdict, the rule that fired with its numbers, the advice, and every input.

    Sizes that were not given (None) leave the noise out: the thresholds are then their floors.
    """

    verdict: str  # one of VERDICTS
    reason: str  # the rule that fired, with its numbers
    advice: str
    epochs: int  # rows in the history
    train_acc: float  # running, as Keras reports it (not used by the rule)
    train_acc_clean: float
    val_acc: float
    gap: float  # train_acc_clean - val_acc, at the last evaluated epoch
    val_acc_change: float | None  # over the last RISING_EPOCHS evaluations; None with one
    still_rising: bool | None
    best_val_loss_epoch: int  # 0: no validation
    best_val_loss: float
    final_val_loss: float
    evaluated_epochs: int = 0  # epochs with a val accuracy
    last_epoch: int = 0  # the last evaluated epoch: where accuracies and the gap are read
    val_images: int | None = None
    clean_images: int | None = None  # the fixed train sample of the clean accuracy
    num_classes: int | None = None
    chance: float | None = None  # 1 / num_classes
    gap_noise: float | None = None  # 2 standard errors of the gap at its accuracies
    gap_threshold: float = MIN_GAP  # max(MIN_GAP, gap_noise)
    evidence_noise: float | None = None  # 2 SE of a gap at 50% accuracy: the sizes alone
    rise_threshold: float = RISING_DELTA  # max(RISING_DELTA, 2 SE of the val accuracy)
    gap_change: float | None = None  # over the same evaluations as val_acc_change
    val_loss_noise: float | None = None  # 2 SE of the lowest val loss
    val_loss_turned: bool | None = None  # val loss up from its minimum beyond its noise
    fit_level: float | None = None  # chance + FIT_SKILL * (1 - chance)
    lr: float | None = None  # at the last epoch (named when the loss diverged)
    diverged_epoch: int | None = None

    def lines(self) -> list[str]:
        """The verdict and its inputs, one fact per line, for the console and the report."""
        first = f"verdict: {self.verdict}: {self.reason}"
        if self.verdict == "no validation":
            return [first, f"  clean train accuracy {self.train_acc_clean:.3f} (eval mode), running "
                           f"train accuracy {self.train_acc:.3f}", f"  advice: {self.advice}"]
        if self.verdict == "diverged":
            return [first, f"  lr {_num(self.lr)} at epoch {self.diverged_epoch}; a uniform guess "
                           f"has a loss of ln(classes) = {math.log(self.num_classes or 10):.2f}",
                    f"  advice: {self.advice}"]
        sizes = self.val_images is not None and self.clean_images is not None
        clean_n = f" on {self.clean_images:,} images" if self.clean_images else ""
        val_n = f" on {self.val_images:,} images" if self.val_images else ""
        noise = (f"2 standard errors {self.gap_noise:.3f}" if self.gap_noise is not None
                 else "sample sizes unknown, noise not judged")
        at = (f" (epoch {self.last_epoch}, the last evaluated of {self.epochs})"
              if self.last_epoch and self.last_epoch != self.epochs else "")
        lines = [
            first,
            f"  clean train accuracy {self.train_acc_clean:.3f}{clean_n} (eval mode), val accuracy "
            f"{self.val_acc:.3f}{val_n}{at}",
            f"  gap {self.gap:+.3f}: it counts above {self.gap_threshold:.3f}, the larger of "
            f"{MIN_GAP:.2f} and its noise ({noise})",
        ]
        if sizes and self.evidence_noise is not None:
            lines.append(f"  evidence: these sample sizes measure a gap to ±{self.evidence_noise:.3f} "
                         f"at 50% accuracy (a verdict needs ±{MAX_GAP_NOISE:.2f} or better)")
        lines.append(f"  running train accuracy {self.train_acc:.3f} (as Keras reports it: measured "
                     "while training, dropout and augmentation on; not used by the rule)")
        if self.val_acc_change is None:
            lines.append("  val accuracy change: n/a (one evaluated epoch: no trend yet)")
        else:
            span = min(RISING_EPOCHS, self.evaluated_epochs - 1)
            trend = "still rising" if self.still_rising else "flat or falling"
            gap_change = (f"; the gap changed {self.gap_change:+.3f}"
                          if self.gap_change is not None else "")
            lines.append(f"  val accuracy change: {self.val_acc_change:+.3f} over the last "
                         f"{plural(span, 'evaluated epoch')} ({trend}: rising means more "
                         f"than {self.rise_threshold:.3f}){gap_change}")
        rose = self.final_val_loss - self.best_val_loss
        loss_noise = (f"noise {self.val_loss_noise:.4f}" if self.val_loss_noise is not None
                      else "noise not judged")
        turned = " (turned up)" if self.val_loss_turned else ""
        lines.append(f"  val loss lowest at epoch {self.best_val_loss_epoch} of {self.epochs} "
                     f"({self.best_val_loss:.4f}; final {self.final_val_loss:.4f}, {rose:+.4f}, "
                     f"{loss_noise}){turned}")
        if self.fit_level is not None and self.chance is not None:
            lines.append(f"  fit: clean train accuracy {self.train_acc_clean:.3f} against "
                         f"{self.fit_level:.3f}, halfway from chance ({self.chance:.3f}, "
                         f"{self.num_classes} classes) to 100%")
        lines.append(f"  advice: {self.advice}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """Every field, the rule's constants under "thresholds"; NaN as None (JSON has no NaN)."""
        thresholds = {"z": Z, "min_gap": MIN_GAP, "max_gap_noise": MAX_GAP_NOISE,
                      "rising_epochs": RISING_EPOCHS, "rising_delta": RISING_DELTA,
                      "fit_skill": FIT_SKILL, "loss_spread": LOSS_SPREAD,
                      "diverge_factor": DIVERGE_FACTOR}
        values = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                  for k, v in self.__dict__.items()}
        return {**values, "thresholds": thresholds}

    def __repr__(self) -> str:  # the verdict, then one fact a line: what report and compare show
        return "\n".join(["Diagnosis:", *(f"  {line.strip()}" for line in self.lines())])

    def _repr_html_(self) -> str:
        first, *facts = self.lines()
        items = "".join(f"<li>{html.escape(fact.strip())}</li>" for fact in facts)
        return f"<div><b>{html.escape(first)}</b><ul>{items}</ul></div>"


def sizes_of(record: Mapping[str, Any]) -> dict[str, int | None]:
    """The sample sizes behind a run's accuracies, from its config.json record: val images, the
    clean train sample (min(clean_train_size, train images)) and the number of classes."""
    config = record.get("config") or {}
    train, val = record.get("train_images"), record.get("val_images")
    clean = record.get("clean_images")
    if clean is None and isinstance(train, int):
        clean = min(int(config.get("clean_train_size", 5000)), train)
    classes = record.get("classes")
    return {"val_images": val if isinstance(val, int) else None,
            "clean_images": clean if isinstance(clean, int) else None,
            "num_classes": len(classes) if isinstance(classes, list) and classes else None}


def diagnose(history: list[dict[str, float]], *, val_images: int | None = None,
             clean_images: int | None = None, num_classes: int | None = None) -> Diagnosis:
    """Apply the rule to a metric history (rows of metrics.csv, oldest first).

    `val_images`, `clean_images`, `num_classes`: the sizes behind the accuracies (`sizes_of`
    reads them from a run's config.json). Without them the noise is not judged.
    """
    if not history:
        raise ValueError("an empty metric history has nothing to diagnose")
    rows = evaluated(history)
    last_row = history[-1]
    chance = 1 / num_classes if num_classes else None
    common: dict[str, Any] = {"epochs": len(history), "val_images": val_images,
                              "clean_images": clean_images, "num_classes": num_classes,
                              "chance": chance, "lr": last_row.get("lr")}

    blown = _diverged(history, num_classes)
    if blown is not None:
        row, why = blown
        lr = row.get("lr")
        return Diagnosis(
            verdict="diverged", reason=why,
            advice=f"the learning rate ({_num(lr)}) is too high: try one 10x lower, or find one with "
                   "cifarlab lr-find", train_acc=row["train_acc"],
            train_acc_clean=row.get("train_acc_clean", math.nan), val_acc=row.get("val_acc", math.nan),
            gap=math.nan, val_acc_change=None, still_rising=None, best_val_loss_epoch=0,
            best_val_loss=math.nan, final_val_loss=math.nan, evaluated_epochs=len(rows),
            diverged_epoch=int(row["epoch"]), **{**common, "lr": lr})
    if not rows:
        return Diagnosis(
            verdict="no validation", reason="the run kept no validation images (--val-fraction 0), "
            "so there is no gap to measure", advice="judge the recipe by a run that validates, or "
            "evaluate this model on a test split: cifarlab evaluate RUN --data SRC --split test",
            train_acc=last_row["train_acc"], train_acc_clean=last_row["train_acc_clean"],
            val_acc=math.nan, gap=math.nan, val_acc_change=None, still_rising=None,
            best_val_loss_epoch=0, best_val_loss=math.nan, final_val_loss=math.nan, **common)

    last = rows[-1]
    clean, val = last["train_acc_clean"], last["val_acc"]
    gap = round(clean - val, 6)  # metrics.csv keeps 6 digits; this drops float noise (0.05000000000000004)
    gap_noise = (Z * math.hypot(_se(clean, clean_images), _se(val, val_images))
                 if val_images and clean_images else None)
    gap_threshold = max(MIN_GAP, gap_noise or 0.0)
    evidence_noise = (Z * math.sqrt(0.25 / val_images + 0.25 / clean_images)
                      if val_images and clean_images else None)
    rise_threshold = max(RISING_DELTA, Z * _se(val, val_images) if val_images else 0.0)
    change, gap_change = _trend(rows)
    rising = None if change is None else change > rise_threshold
    gap_grew = gap_change is not None and gap_change > rise_threshold
    best = min(rows, key=lambda row: row["val_loss"])
    loss_noise = (Z * LOSS_SPREAD * best["val_loss"] / math.sqrt(val_images)
                  if val_images else None)
    loss_rise = last["val_loss"] - best["val_loss"]
    turned_loss = best is not last and loss_rise > (loss_noise or 0.0)
    fit_level = chance + FIT_SKILL * (1 - chance) if chance is not None else None
    low_fit = fit_level is not None and clean < fit_level
    at_chance = (chance is not None and val_images is not None
                 and val - chance <= Z * _se(chance, val_images))
    big_gap = gap > gap_threshold
    # the val curve has turned: val loss up from its lowest, or val flat while the gap grows
    turned = turned_loss or (rising is False and gap_grew)
    gap_text = f"gap {gap:+.3f} (clean train {clean:.3f} - val {val:.3f})"
    rise_text = (f"val accuracy {change:+.3f} over the last "
                 f"{plural(min(RISING_EPOCHS, len(rows) - 1), 'evaluated epoch')}"
                 if change is not None else "")

    if evidence_noise is not None and evidence_noise > MAX_GAP_NOISE:
        verdict = "not enough evidence"
        reason = (f"{val_images:,} val and {clean_images:,} clean train images measure a gap only to "
                  f"±{evidence_noise:.3f} (more than ±{MAX_GAP_NOISE:.2f})")
        advice = ("validate on more images: a larger --val-fraction (about 100 val images give "
                  "±0.10, 1,000 give ±0.04)")
    elif rising and not turned_loss and (big_gap or low_fit):
        verdict = "still learning"
        lowest = ("val loss at its lowest in the last evaluated epoch" if best is last else
                  f"val loss within its noise of its lowest (epoch {int(best['epoch'])}, "
                  f"{loss_rise:+.4f})")
        reason = f"{rise_text} (> {rise_threshold:.3f}) and {lowest}: the curves have not turned yet"
        advice = (f"train longer; judge the {gap_text} once val accuracy stops rising" if big_gap
                  else "train longer: the model is still fitting its training images")
    elif big_gap and change is None and not low_fit:
        verdict = "not enough evidence"
        reason = (f"{gap_text} > {gap_threshold:.3f}, but one evaluated epoch draws no curve: "
                  "is val accuracy still rising?")
        advice = "train (or evaluate) more epochs to see whether the val curve turns"
    elif big_gap and (turned or at_chance):
        verdict = "overfitting"
        turn = (f"the val curve has turned: val loss rose {loss_rise:+.4f} from its lowest at epoch "
                f"{int(best['epoch'])} (> its noise {loss_noise or 0.0:.4f})" if turned_loss else
                f"val accuracy is at chance ({chance or 0:.3f}): it memorised its training images"
                if at_chance else
                f"the val curve has turned: val accuracy flat ({change:+.3f}) while the gap grew "
                f"{gap_change:+.3f} (both against a noise of {rise_threshold:.3f})")
        reason = f"{gap_text} > {gap_threshold:.3f}, and {turn}"
        advice = ("add regularisation (augmentation, dropout, weight decay) or more data"
                  + (f", or stop at epoch {int(best['epoch'])}, the lowest val loss"
                     if turned_loss else ""))
    elif big_gap and not low_fit:
        verdict = "not enough evidence"
        reason = (f"{gap_text} > {gap_threshold:.3f}, but the val curve has neither turned nor "
                  f"kept rising beyond its noise ({rise_text}, rising means more than "
                  f"{rise_threshold:.3f}; val loss within its noise of its lowest)")
        advice = ("train more epochs to see where the curves go, or validate on more images to "
                  "shrink the noise")
    elif low_fit or at_chance:
        verdict = "underfitting"
        reason = (f"val accuracy {val:.3f} is within noise of chance ({chance or 0:.3f})" if at_chance
                  else f"clean train accuracy {clean:.3f} < {fit_level or 0:.3f}: less than halfway "
                       f"from chance ({chance or 0:.3f}) to fitting its training images")
        advice = ("one evaluated epoch shows no trend: train more epochs; if accuracy stays this low, "
                  "try a bigger model or another learning rate (cifarlab lr-find)" if change is None
                  else "val accuracy is still rising: train for more epochs" if rising
                  else f"val accuracy rose no more than its noise ({change:+.3f}, noise "
                       f"{rise_threshold:.3f}): if more epochs do not lift it, try a bigger model or "
                       "another learning rate (cifarlab lr-find)")
    else:
        verdict = "good generalization"
        fitted = (f", and the training images are fitted ({clean:.3f} >= {fit_level:.3f})"
                  if fit_level is not None else " (the number of classes is unknown: the fit is "
                  "not judged)")
        reason = f"{gap_text} within {gap_threshold:.3f}{fitted}"
        advice = ("val accuracy is still rising: more epochs may help" if rising
                  else "keep this recipe; compare it with others by val accuracy")
    return Diagnosis(
        verdict=verdict, reason=reason, advice=advice, train_acc=last["train_acc"],
        train_acc_clean=clean, val_acc=val, gap=gap, val_acc_change=change, still_rising=rising,
        best_val_loss_epoch=int(best["epoch"]), best_val_loss=best["val_loss"],
        final_val_loss=last["val_loss"], evaluated_epochs=len(rows), last_epoch=int(last["epoch"]),
        gap_noise=_round(gap_noise), gap_threshold=round(gap_threshold, 6),
        evidence_noise=_round(evidence_noise), rise_threshold=round(rise_threshold, 6),
        gap_change=gap_change, val_loss_noise=_round(loss_noise), val_loss_turned=turned_loss,
        fit_level=_round(fit_level), **common)


def val_acc_trend(history: list[dict[str, float]]) -> tuple[float | None, bool | None]:
    """Change of val accuracy over the last RISING_EPOCHS evaluations, and whether that is more
    than RISING_DELTA (the floor of the rule's threshold, for histories without sizes)."""
    change, _ = _trend(evaluated(history))
    return change, None if change is None else change > RISING_DELTA


def _trend(rows: list[dict[str, float]]) -> tuple[float | None, float | None]:
    """(change of val accuracy, change of the gap) over the last RISING_EPOCHS evaluated rows."""
    if len(rows) < 2:
        return None, None
    then, now = rows[-1 - min(RISING_EPOCHS, len(rows) - 1)], rows[-1]
    gap_then = then["train_acc_clean"] - then["val_acc"]
    gap_now = now["train_acc_clean"] - now["val_acc"]
    return round(now["val_acc"] - then["val_acc"], 6), round(gap_now - gap_then, 6)


def _diverged(history: list[dict[str, float]],
              num_classes: int | None) -> tuple[dict[str, float], str] | None:
    """The first epoch whose train or val loss is not a finite number, or whose train loss
    exceeds DIVERGE_FACTOR x ln(classes) (10 classes: 23), and why."""
    limit = DIVERGE_FACTOR * math.log(num_classes or 10)
    for row in history:
        loss = row.get("train_loss", math.nan)
        if not is_number(loss):
            return row, f"the train loss became {loss} at epoch {int(row['epoch'])}"
        if loss > limit:
            return row, (f"the train loss exploded to {loss:.3g} at epoch {int(row['epoch'])} "
                         f"(> {limit:.1f}, {DIVERGE_FACTOR:g} x a uniform guess's)")
        if is_number(row.get("val_acc")) and not is_number(row.get("val_loss")):
            return row, f"the val loss became {row.get('val_loss')} at epoch {int(row['epoch'])}"
    return None


def _se(p: float, n: int | None) -> float:
    """Standard error of an accuracy p measured on n images (p kept 1/n away from 0 and 1)."""
    if not n:
        return 0.0
    p = min(max(p, 1 / n), 1 - 1 / n) if n > 1 else 0.5
    return math.sqrt(p * (1 - p) / n)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "?"
