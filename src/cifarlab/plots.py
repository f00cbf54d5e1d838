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

DPI = 110  # sharp enough to zoom into on a phone, small enough to embed (~100 KB a figure)
TRAIN, VAL, GAP = "tab:blue", "tab:orange", "tab:red"
RIGHT, WRONG = "#1a7f37", "#cf222e"  # green / red, with a ✓ / ✗ for readers who can't tell them apart
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


def _epoch_axis(ax: Axes) -> None:
    ax.set_xlabel("epoch")
    low, high = ax.get_xlim()
    if high - low < 1:  # a single epoch: whole-number ticks around it, not 0.95 ... 1.05
        middle = round((low + high) / 2)
        ax.set_xlim(middle - 1, middle + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


@plain_text
def curves(history: list[dict[str, float]], title: str, best_val_loss_epoch: int) -> LabFigure:
    """Loss and accuracy per epoch, train vs val, the gap shaded, running and clean train accuracy."""
    epochs = np.array([row["epoch"] for row in history])
    col = {key: np.array([row[key] for row in history], dtype=float) for key in history[0]}
    # Evaluated epochs only (eval_every skips some): their points, joined by lines.
    seen = np.isfinite(col["train_acc_clean"])
    fig = LabFigure(figsize=(12, 5.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    has_val = any(np.isfinite(col["val_acc"]))  # --val-fraction 0: train curves only
    loss_ax.plot(epochs, col["train_loss"], "o--", color=TRAIN, alpha=0.6)
    if has_val:
        loss_ax.plot(epochs[seen], col["val_loss"][seen], "o-", color=VAL)
    loss_ax.set(title="Cross-entropy loss per epoch", ylabel="loss")
    acc_ax.plot(epochs, col["train_acc"], "o--", color=TRAIN, alpha=0.6,
                label="train, running (as Keras reports it: dropout + augmentation on, mid-epoch weights)")
    acc_ax.plot(epochs[seen], col["train_acc_clean"][seen], "o-", color=TRAIN,
                label="train, clean: eval mode")
    if has_val:
        acc_ax.plot(epochs[seen], col["val_acc"][seen], "o-", color=VAL, label="val")
        acc_ax.fill_between(epochs[seen], col["train_acc_clean"][seen], col["val_acc"][seen],
                            color=GAP, alpha=0.15, label="gap: clean train − val")
    acc_ax.set(title="Accuracy per epoch" + ("" if has_val else " (no validation images)"),
               ylabel="accuracy")
    _percent_axis(acc_ax)
    for ax in (loss_ax, acc_ax):
        if best_val_loss_epoch:
            ax.axvline(best_val_loss_epoch, color="gray", linestyle=":",
                       label=f"lowest val loss (epoch {best_val_loss_epoch})")
        _epoch_axis(ax)
    # One legend for both panels, below them, so it never hides a curve.
    fig.legend(*acc_ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=9.5)
    fig.suptitle(title, fontsize=13)
    return fig


@plain_text
def confusion(counts: np.ndarray, classes: Sequence[str], title: str) -> LabFigure:
    """Two heat maps side by side: raw counts, and each row as a share of its true class."""
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
    for ax, image, caption, ok in zip(axes, images, captions, right, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=9, color=RIGHT if ok else WRONG)
    fig.suptitle(title, fontsize=12, y=1 - 0.15 / height)
    fig.tight = False  # fixed margins already
    return fig


@plain_text
def class_grid(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], per_class: int,
               title: str, seed: int = 0) -> LabFigure:
    """`per_class` random images of every class, one row per class, its name on the left."""
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
        if not np.isfinite(history[-1]["val_acc"]):  # --val-fraction 0: nothing to draw
            continue
        rows = [r for r in history if np.isfinite(r["val_acc"])]  # eval_every skips some epochs
        ax.plot([r["epoch"] for r in rows], [r["val_acc"] for r in rows], "o-", markersize=3,
                label=f"{label}: {history[-1]['val_acc']:.1%}")
    ax.set(title="Validation accuracy per epoch (legend: final val accuracy)", ylabel="val accuracy")
    _percent_axis(ax)
    _epoch_axis(ax)
    ax.legend(loc="lower right", fontsize=9)  # curves rise from the lower left; this corner stays free
    return fig
