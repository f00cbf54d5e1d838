"""The report's figures, each returned as a matplotlib Figure (`to_png` for the files and HTML).

Figures are built with `matplotlib.figure.Figure` directly, not pyplot: no GUI backend, no global
figure registry to leak memory, and it works on a machine without a display. They are `LabFigure`s,
which Jupyter shows inline by itself (`_repr_png_`), with no `%matplotlib inline` needed.

Every text is plain text: class and run names are the user's folder names, and matplotlib would
read `$...$` in them as math (a class named `$\\foo$` made it raise; `a$b$c` came out as math).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from cifarlab.history import measured

DPI = 110  # sharp enough to zoom into on a phone, small enough to embed (~100 KB a figure)
TRAIN, VAL, GAP = "tab:blue", "tab:orange", "tab:red"
RIGHT, WRONG = "#1a7f37", "#cf222e"  # green / red, with a ✓ / ✗ for readers who can't tell them apart
NEUTRAL = "#1f2328"  # a prediction whose truth is unknown (your own images): neither right nor wrong
ANNOTATE_MAX_CLASSES = 20  # above this many classes, numbers in the confusion cells are unreadable


Draw = TypeVar("Draw", bound=Callable[..., Any])
PLAIN_TEXT: Any = {"text.parse_math": False, "text.usetex": False}


def plain_text(draw: Draw) -> Draw:
    """Build a figure with mathtext and TeX off (LabFigure renders it the same way): class and run
    names are the user's folder names, which must never be read as math."""
    @functools.wraps(draw)
    def run(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(PLAIN_TEXT):
            return draw(*args, **kwargs)
    return run  # type: ignore[return-value]


class LabFigure(Figure):
    """A Figure that Jupyter displays inline as PNG, renders its texts as plain text, and knows how
    it prefers to be cropped."""

    tight = True  # crop to the drawn content when saved (costs a second drawing pass)

    def savefig(self, *args: Any, **kwargs: Any) -> None:
        # Tick labels are made while the figure is drawn: the setting must hold until then.
        with matplotlib.rc_context(PLAIN_TEXT):
            super().savefig(*args, **kwargs)

    def _repr_png_(self) -> bytes:
        return to_png(self)


def to_png(fig: Figure, tight: bool | None = None) -> bytes:
    """PNG bytes of a figure, cropped as the figure prefers unless `tight` says otherwise."""
    tight = getattr(fig, "tight", True) if tight is None else tight
    buffer = io.BytesIO()
    with matplotlib.rc_context(PLAIN_TEXT):  # any Figure, not only a LabFigure
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight" if tight else None,
                    facecolor="white")
    return buffer.getvalue()


def _percent_axis(ax: Axes) -> None:
    """Whole percents, unless the axis spans under 5 points (then as many decimals as it needs,
    so that ticks never read 30% 30% 30%)."""
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0 if high - low >= 0.05 else None))


SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_of_ten(value: float, _position: object = None) -> str:
    """A tick label in plain text: "10⁻⁷" for a power of ten, "3×10⁻⁴" between (mathtext is
    off in our figures, so matplotlib's own log labels would print as raw "$\\mathdefault..$").

        >>> power_of_ten(1e-7), power_of_ten(1.0), power_of_ten(3e-4)
        ('10⁻⁷', '1', '3×10⁻⁴')
    """
    if value <= 0:
        return ""
    exponent = int(np.floor(np.log10(value) + 1e-9))
    mantissa = round(value / 10.0**exponent, 6)
    power = "1" if exponent == 0 else "10" if exponent == 1 else "10" + str(exponent).translate(SUPERSCRIPT)
    if mantissa == 1:
        return power
    return f"{mantissa:g}" + ("" if exponent == 0 else f"×{power}")


def log_axis(ax: Axes) -> None:
    """A readable log x axis: a plain-text label at each power of ten (every other one past 10
    decades), unlabelled minor ticks between."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    low, high = ax.get_xlim()
    decades = np.log10(high) - np.log10(low)
    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=12))
    if decades > 10:
        ax.xaxis.set_major_locator(LogLocator(base=100, numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(power_of_ten))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10)), numticks=100))
    ax.xaxis.set_minor_formatter(NullFormatter())


def epoch_axis(ax: Axes) -> None:
    """Whole-number epoch ticks, and a window of 3 around a single epoch."""
    ax.set_xlabel("epoch")
    low, high = ax.get_xlim()
    if high - low < 1:  # a single epoch: whole-number ticks around it, not 0.95 ... 1.05
        middle = round((low + high) / 2)
        ax.set_xlim(middle - 1, middle + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


@plain_text
def curves(history: list[dict[str, float]], title: str, best_val_loss_epoch: int) -> LabFigure:
    """Loss and accuracy per epoch, train vs val, the gap shaded, running and clean train accuracy.

    Epochs without evaluation (empty val cells) are left out of the val and clean curves, which
    join the evaluated epochs."""
    epochs = [row["epoch"] for row in history]
    col = {key: [row[key] for row in history] for key in history[0]}
    scored = measured(history)
    clean_rows = measured(history, "train_acc_clean")
    at = {key: [row[key] for row in scored] for key in ("epoch", "val_loss", "val_acc", "train_acc_clean")}
    fig = LabFigure(figsize=(12, 5.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    has_val = bool(scored)  # --val-fraction 0: train curves only
    loss_ax.plot(epochs, col["train_loss"], "o--", color=TRAIN, alpha=0.6)
    if has_val:
        loss_ax.plot(at["epoch"], at["val_loss"], "o-", color=VAL)
    loss_ax.set(title="Cross-entropy loss per epoch", ylabel="loss")
    acc_ax.plot(epochs, col["train_acc"], "o--", color=TRAIN, alpha=0.6,
                label="train, running (as Keras reports it: dropout + augmentation on, mid-epoch weights)")
    acc_ax.plot([r["epoch"] for r in clean_rows], [r["train_acc_clean"] for r in clean_rows], "o-",
                color=TRAIN, label="train, clean: eval mode")
    if has_val:
        acc_ax.plot(at["epoch"], at["val_acc"], "o-", color=VAL, label="val")
        acc_ax.fill_between(at["epoch"], at["train_acc_clean"], at["val_acc"], color=GAP, alpha=0.15,
                            label="gap: clean train − val")
    acc_ax.set(title="Accuracy per epoch" + ("" if has_val else " (no validation images)"),
               ylabel="accuracy")
    _percent_axis(acc_ax)
    for ax in (loss_ax, acc_ax):
        if best_val_loss_epoch:
            ax.axvline(best_val_loss_epoch, color="gray", linestyle=":",
                       label=f"lowest val loss (epoch {best_val_loss_epoch})")
        epoch_axis(ax)
    # One legend for both panels, below them, so it never hides a curve.
    fig.legend(*acc_ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=9.5)
    fig.suptitle(title, fontsize=13)
    return fig


def short(name: str, limit: int) -> str:
    """A class name cut to `limit` characters with an ellipsis, for captions under 2-inch images
    (CIFAR-100's superclasses run to 29: large_man-made_outdoor_things)."""
    return name if len(name) <= limit else name[:limit - 1] + "…"


@plain_text
def confusion(counts: np.ndarray, classes: Sequence[str], title: str) -> LabFigure:
    """Two heat maps side by side: raw counts, and each row as a share of its true class. Above
    ANNOTATE_MAX_CLASSES classes, one map of the mistakes alone (`confusion_many`)."""
    if len(classes) > ANNOTATE_MAX_CLASSES:
        return confusion_many(counts, classes, title)
    totals = counts.sum(1, keepdims=True)
    shares = counts / np.maximum(totals, 1)
    size = min(20.0, max(5.5, 0.55 * len(classes) + 2.5))  # inches a panel: 10 classes -> 8
    fig = LabFigure(figsize=(2 * size + 1, size), layout="constrained")
    panels = [(counts, "Counts", "images"), (shares * 100, "Row-normalized (% of true class)", "% of row")]
    for ax, (values, name, unit) in zip(fig.subplots(1, 2), panels, strict=True):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, shrink=0.8, label=unit)
        ticks = np.arange(len(classes))
        ax.set_xticks(ticks, classes, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(ticks, classes)
        ax.set(title=name, xlabel="predicted class", ylabel="true class")
        if len(classes) <= ANNOTATE_MAX_CLASSES:
            dark = values > values.max() * 0.6
            for (i, j), value in np.ndenumerate(values):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=9,
                        color="white" if dark[i, j] else "black")
    fig.suptitle(title, fontsize=13)
    return fig


CLASS_INCHES = 0.14  # a row and column per class in confusion_many: 100 classes -> 14 inches
THIN_LABELS = 6.0  # points: below the 10 points a row takes at CLASS_INCHES (0.14 in = 10 pt)


@plain_text
def confusion_many(counts: np.ndarray, classes: Sequence[str], title: str) -> LabFigure:
    """The confusion matrix of many classes (CIFAR-100): one square map, each row's mistakes as a
    share of its true class. The right answers (the diagonal) are left out of the colour scale and
    drawn grey: with them in it, a 5% confusion would be a pale dot beside a dark diagonal. Every
    class is labelled, in thin type; open the PNG at full size to read it (the report also draws
    `confusion_summary`, readable at page width)."""
    n = len(classes)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    diagonal = np.eye(n, dtype=bool)
    wrong = np.ma.masked_array(shares * 100, mask=diagonal | (counts == 0))  # blank: none
    side = CLASS_INCHES * n
    fig = LabFigure(figsize=(side + 3.2, side + 2.4), layout="constrained")
    ax = fig.subplots()
    ax.set_facecolor("white")
    # the diagonal in greys, darker where more of the class is right (an empty class: none)
    ax.imshow(np.ma.masked_array(shares, mask=~diagonal | (counts.sum(1) == 0)[:, None]),
              cmap="Greys", vmin=-0.3, vmax=1.3)
    top = max(float(wrong.max()) if wrong.count() else 0.0, 1.0)
    image = ax.imshow(wrong, cmap="Reds", vmin=0, vmax=top)
    fig.colorbar(image, ax=ax, shrink=0.5, label="% of the true class taken for the predicted one")
    ticks = np.arange(n)
    ax.set_xticks(ticks, classes, rotation=90, fontsize=THIN_LABELS)
    ax.set_yticks(ticks, classes, fontsize=THIN_LABELS)
    ax.tick_params(length=2, width=0.5)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Mistakes: each row's wrong answers as a % of its true class ({n} classes; "
                 "diagonal in grey: the right answers, darker for more)")
    fig.suptitle(title, fontsize=13)
    return fig


SUMMARY_ROWS = 15  # bars in each panel of confusion_summary: readable at page width


@plain_text
def confusion_summary(counts: np.ndarray, classes: Sequence[str], title: str,
                      rows: int = SUMMARY_ROWS) -> LabFigure:
    """What a confusion matrix of many classes says, at a size that reads: the most confused
    (true, predicted) pairs, and the classes with the lowest accuracy (recall), as bars."""
    support = counts.sum(1)
    recall = np.diag(counts) / np.maximum(support, 1)
    off = counts.astype(np.float64).copy()
    np.fill_diagonal(off, 0)
    share = off / np.maximum(support, 1)[:, None]
    # pairs by count, then by share of the true class
    order = np.lexsort((-share.ravel(), -off.ravel()))[:rows]
    pairs = [divmod(int(k), len(classes)) for k in order if off.flat[int(k)] > 0]
    present = np.flatnonzero(support > 0)
    hardest = present[np.argsort(recall[present], kind="stable")[:rows]]
    fig = LabFigure(figsize=(12, 0.32 * rows + 1.6), layout="constrained")
    pair_ax, class_ax = fig.subplots(1, 2)
    labels = [f"{short(classes[i], 24)} → {short(classes[j], 24)}" for i, j in pairs]
    values = [share[i, j] for i, j in pairs]
    pair_ax.barh(range(len(pairs)), values, color=GAP, alpha=0.8)
    for y, (i, j) in enumerate(pairs):
        pair_ax.text(share[i, j], y, f" {int(off[i, j])} of {int(support[i])}", va="center",
                     fontsize=8.5)
    pair_ax.set_yticks(range(len(pairs)), labels, fontsize=9)
    pair_ax.set(title=f"The {len(pairs)} most confused pairs: true → predicted",
                xlabel="share of the true class")
    class_ax.barh(range(len(hardest)), recall[hardest], color=TRAIN)
    for y, i in enumerate(hardest):
        class_ax.text(recall[i], y, f" {recall[i]:.0%}", va="center", fontsize=8.5)
    class_ax.set_yticks(range(len(hardest)), [short(classes[i], 30) for i in hardest], fontsize=9)
    mean = float(recall[present].mean()) if len(present) else 0.0
    class_ax.axvline(mean, color="gray", linestyle=":", label=f"mean over classes: {mean:.0%}")
    class_ax.legend(loc="lower right", fontsize=8.5)
    class_ax.set(title=f"The {len(hardest)} hardest of {len(present)} classes: accuracy (recall)",
                 xlabel="right answers, share of the class", xlim=(0, 1.15))
    for ax in (pair_ax, class_ax):
        ax.invert_yaxis()  # the largest first, at the top
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.grid(axis="x", alpha=0.3)
    if not pairs:
        pair_ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=pair_ax.transAxes)
    pair_ax.set_xlim(0, max([*values, 0.01]) * 1.3)
    fig.suptitle(title, fontsize=13)
    return fig


CAPTION_CHARS = 25  # characters of a caption line that fit a 2-inch column at 9 points


def caption_size(captions: Sequence[str], points: float = 9.0, chars: int = CAPTION_CHARS) -> float:
    """The font size at which the longest caption line fits its column: `points` unless a line is
    longer than `chars` (long class names: CIFAR-100's superclasses), then smaller, down to 6."""
    longest = max((len(line) for caption in captions for line in caption.splitlines()), default=0)
    return max(6.0, min(points, points * chars / max(longest, 1)))


@plain_text
def image_grid(images: np.ndarray, captions: Sequence[str], right: Sequence[bool], title: str,
               columns: int = 6) -> LabFigure:
    """32x32 images enlarged without smoothing, each captioned in green (right) or red (wrong)."""
    rows = max(1, -(-len(images) // columns))
    head = 0.9  # inches above the first row: the title, then the first row's captions
    height = rows * 2.25 + head  # 2.25 inches a row: the image and two caption lines
    fig = LabFigure(figsize=(columns * 2.0, height))
    # Fixed margins, not constrained layout: laying out 24 axes that way costs a second per figure.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - head / height, wspace=0.1, hspace=0.3)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_axis_off()
    size = caption_size(captions)
    for ax, image, caption, ok in zip(axes, images, captions, right, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=size, color=RIGHT if ok else WRONG)
    fig.suptitle(title, fontsize=12, y=1 - 0.15 / height)
    fig.tight = False  # fixed margins already
    return fig


@plain_text
def class_grid(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], per_class: int,
               title: str, seed: int = 0) -> LabFigure:
    """`per_class` random images of every class, one row per class, its name on the left (past
    ANNOTATE_MAX_CLASSES classes, several classes a row: `class_blocks`)."""
    if len(classes) > ANNOTATE_MAX_CLASSES:
        return class_blocks(images, labels, classes, per_class, title, seed)
    rng = np.random.default_rng(seed)
    fig = LabFigure(figsize=(per_class * 1.1 + 1.4, len(classes) * 1.1 + 0.6))
    fig.subplots_adjust(left=0.13, right=0.99, bottom=0.01, top=1 - 0.6 / (len(classes) * 1.1 + 0.6),
                        wspace=0.05, hspace=0.05)
    axes = np.atleast_2d(fig.subplots(len(classes), per_class, squeeze=False))
    for row, name in enumerate(classes):
        members = np.flatnonzero(labels == row)
        chosen = rng.permutation(members)[:per_class]
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(chosen):
                ax.imshow(images[chosen[col]], interpolation="nearest")
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(title, fontsize=12)
    fig.tight = False  # fixed margins already
    return fig


THUMB_INCHES = 0.5  # an image in class_blocks: 32 pixels drawn at 2x on the page
BLOCKS_WIDE_INCHES = 15.0  # class_blocks' width: as many classes a row as fit


@plain_text
def class_blocks(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], per_class: int,
                 title: str, seed: int = 0) -> LabFigure:
    """`per_class` random images of every class for many classes (CIFAR-100): each class a strip
    of images under its name, as many strips a row as fit the width. One canvas and one imshow:
    100 classes as 800 axes would take a minute to draw."""
    rng = np.random.default_rng(seed)
    gap, band, space = 2, 12, 14  # pixels: between images, for the name, between strips
    strip = per_class * (32 + gap) - gap
    across = max(1, int(BLOCKS_WIDE_INCHES * 32 / THUMB_INCHES) // (strip + space))
    down = -(-len(classes) // across)
    width, height = across * (strip + space) - space, down * (band + 32 + space) - space
    canvas = np.full((height, width, 3), 255, np.uint8)
    inches = height * THUMB_INCHES / 32 + 0.6  # 0.6: the title
    fig = LabFigure(figsize=(width * THUMB_INCHES / 32, inches))
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - 0.6 / inches)
    ax = fig.subplots()
    ax.set_axis_off()
    for row, name in enumerate(classes):
        top = (row // across) * (band + 32 + space)
        left = (row % across) * (strip + space)
        chosen = rng.permutation(np.flatnonzero(labels == row))[:per_class]
        for k, index in enumerate(chosen):
            x = left + k * (32 + gap)
            canvas[top + band:top + band + 32, x:x + 32] = images[index]
        ax.text(left, top + band - 2, short(name, 2 * per_class + 4), fontsize=8, va="bottom")
    ax.imshow(canvas, interpolation="nearest")
    fig.suptitle(title, fontsize=12, y=1 - 0.15 / inches, va="top")
    fig.tight = False  # fixed margins already
    return fig


@plain_text
def reliability(calibration: dict[str, Any], title: str) -> LabFigure:
    """Accuracy against confidence per bin, over the diagonal of perfect calibration; counts below.

    `calibration` is what `report.calibration` returns: bin_edges, accuracy, confidence, count, ece.
    """
    bin_edges, bin_count = np.asarray(calibration["bin_edges"]), np.asarray(calibration["count"])
    bin_accuracy, bin_confidence = np.asarray(calibration["accuracy"]), np.asarray(calibration["confidence"])
    fig = LabFigure(figsize=(6.4, 7), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    width = np.diff(bin_edges)
    filled = bin_count > 0
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.bar(bin_edges[:-1][filled], bin_accuracy[filled], width=width[filled], align="edge",
            color=TRAIN, edgecolor="white", label="accuracy in bin")
    top.bar(bin_edges[:-1][filled], (bin_confidence - bin_accuracy)[filled], width=width[filled],
            bottom=bin_accuracy[filled], align="edge", fill=False, hatch="///", edgecolor=GAP,
            label="gap to the mean confidence in the bin")
    top.set(title=f"{title}\nECE = {calibration['ece']:.3f} (0 = confidence matches accuracy)",
            ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left", fontsize=9)
    top.grid(alpha=0.3)
    bottom.bar(bin_edges[:-1], bin_count, width=width, align="edge", color="gray", edgecolor="white")
    bottom.set(xlabel="confidence (top predicted probability)", ylabel="images")
    bottom.grid(alpha=0.3)
    return fig


@plain_text
def val_curves(runs: Sequence[tuple[str, list[dict[str, float]]]]) -> LabFigure:
    """Validation accuracy per epoch of several runs on one chart."""
    fig = LabFigure(figsize=(9, 5.2), layout="constrained")
    ax = fig.subplots()
    for label, history in runs:
        scored = measured(history)  # epochs that were evaluated
        if not scored:  # --val-fraction 0: nothing to draw
            continue
        ax.plot([r["epoch"] for r in scored], [r["val_acc"] for r in scored], "o-", markersize=3,
                label=f"{label}: {scored[-1]['val_acc']:.1%}")
    ax.set(title="Validation accuracy per epoch (legend: final val accuracy)", ylabel="val accuracy")
    _percent_axis(ax)
    epoch_axis(ax)
    ax.legend(loc="lower right", fontsize=9)  # curves rise from the lower left; this corner stays free
    return fig
