"""Accuracy under the 15 CIFAR-10-C corruptions at 5 severities, beside the clean accuracy.

    result = measure(model, split.images, split.labels, torch.device("cpu"))
    result.clean_acc, result.mean_acc, result.relative_drop, result.group_means
    result.write(run_dir / "robustness")    # robustness.csv, robustness.json, robustness.png
    load(run_dir / "robustness")            # the same Robustness back, or None

The corrupted images are made on the fly from a seed (cifarlab.corruptions), so two models measured
with the same images and seed see exactly the same corrupted pixels. The mean corruption accuracy
is the plain mean over every corruption x severity cell, the figure CIFAR-10-C papers report
(a WRN-28-10 at 94.8 % clean keeps about 73 %). The relative drop, (clean - mean) / clean, says how
much of what a model knows survives corruption, so models of different clean accuracy compare.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from torch import nn
from tqdm.auto import tqdm

from cifarlab import fsio, plots
from cifarlab.corruptions import CORRUPTIONS, GROUPS, SEVERITIES, check, corrupt
from cifarlab.errors import UserError
from cifarlab.evaluate import predict_logits

FORMAT = "cifarlab-robustness"
CSV_FILE, JSON_FILE, FIGURE_FILE = "robustness.csv", "robustness.json", "robustness.png"


@dataclass(frozen=True)
class Preset:
    images: int | None  # how many images to measure on (a seeded random subset); None: all
    severities: tuple[int, ...]


PRESETS = {
    # The benchmark's grid: 75 corrupted copies of every image (~3 minutes for `base` on 5,000
    # validation images on 2 CPU cores, half of it making the corruptions).
    "full": Preset(None, SEVERITIES),
    # A first look in ~1/8 of the time: 1,000 images (accuracy +- 1.5 points) at the lowest,
    # middle and highest severity.
    "quick": Preset(1000, (1, 3, 5)),
}


@dataclass
class Robustness:
    clean_acc: float
    table: dict[str, list[float]]  # corruption -> accuracy at each of `severities`
    severities: tuple[int, ...]
    n_images: int
    seed: int = 0
    seconds: float = 0.0  # wall-clock time of the measurement

    def __repr__(self) -> str:
        groups = ", ".join(f"{name} {acc:.3f}" for name, acc in self.group_means.items())
        worst = sorted(self.corruption_means.items(), key=lambda item: item[1])[:3]
        return (f"Robustness({self.n_images:,} images, severities "
                f"{', '.join(map(str, self.severities))}):\n"
                f"  clean accuracy {self.clean_acc:.3f}, under corruption {self.mean_acc:.3f} "
                f"(relative drop {self.relative_drop:.1%})\n  by group: {groups}\n"
                f"  worst: {', '.join(f'{name} {acc:.3f}' for name, acc in worst)}")

    def _repr_html_(self) -> str:
        from cifarlab.display import table

        rows = [[name, f"{acc:.3f}", *(f"{a:.3f}" for a in self.table[name])]
                for name, acc in self.corruption_means.items()]
        caption = (f"Accuracy under corruption ({self.n_images:,} images): clean "
                   f"{self.clean_acc:.3f}, mean {self.mean_acc:.3f}, relative drop "
                   f"{self.relative_drop:.1%}; by group: "
                   + ", ".join(f"{g} {a:.3f}" for g, a in self.group_means.items()))
        return table(["corruption", "mean", *(f"severity {s}" for s in self.severities)], rows,
                     "t" + "n" * (1 + len(self.severities)), caption=caption)

    @property
    def mean_acc(self) -> float:
        """Mean accuracy over every corruption x severity cell."""
        return statistics.fmean(acc for row in self.table.values() for acc in row)

    @property
    def relative_drop(self) -> float:
        """(clean - mean) / clean: the share of the clean accuracy lost under corruption."""
        return (self.clean_acc - self.mean_acc) / self.clean_acc if self.clean_acc > 0 else 0.0

    @property
    def corruption_means(self) -> dict[str, float]:
        """Mean accuracy over the severities, per corruption."""
        return {name: statistics.fmean(row) for name, row in self.table.items()}

    @property
    def group_means(self) -> dict[str, float]:
        """Mean accuracy per group (noise, blur, weather, digital) over the measured corruptions."""
        means = {}
        for group, names in GROUPS.items():
            cells = [acc for name in names if name in self.table for acc in self.table[name]]
            if cells:
                means[group] = statistics.fmean(cells)
        return means

    @property
    def severity_means(self) -> list[float]:
        """Mean accuracy over the corruptions, per severity."""
        return [statistics.fmean(row[i] for row in self.table.values())
                for i in range(len(self.severities))]

    def to_rows(self) -> list[dict[str, Any]]:
        """The table as rows: clean first, one row per corruption, then the mean over corruptions.

        Columns: corruption, group, severity_<s> for each severity, mean.
        """
        columns = [f"severity_{s}" for s in self.severities]
        rows: list[dict[str, Any]] = [
            {"corruption": "clean", "group": "", **dict.fromkeys(columns), "mean": self.clean_acc}]
        group_of = {name: group for group, names in GROUPS.items() for name in names}
        for name, row in self.table.items():
            rows.append({"corruption": name, "group": group_of[name],
                         **dict(zip(columns, row, strict=True)), "mean": statistics.fmean(row)})
        rows.append({"corruption": "mean", "group": "",
                     **dict(zip(columns, self.severity_means, strict=True)), "mean": self.mean_acc})
        return rows

    def to_csv(self) -> str:
        rows = self.to_rows()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
        return buffer.getvalue()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": 1,
            "clean_acc": self.clean_acc, "mean_acc": self.mean_acc,
            "relative_drop": self.relative_drop, "group_means": self.group_means,
            "corruption_means": self.corruption_means,
            "severities": list(self.severities), "n_images": self.n_images, "seed": self.seed,
            "seconds": round(self.seconds, 1),
            "table": self.table,
            "note": "CIFAR-10-C corruptions and severities (Hendrycks & Dietterich 2019) made by "
                    "cifarlab.corruptions; frost uses a procedural texture, not the benchmark's "
                    "photographs",
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Robustness:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        table = {str(name): [float(v) for v in row] for name, row in data["table"].items()}
        severities = tuple(int(s) for s in data["severities"])
        if any(len(row) != len(severities) for row in table.values()):
            raise ValueError("rows and severities differ in length")
        return cls(clean_acc=float(data["clean_acc"]), table=table, severities=severities,
                   n_images=int(data["n_images"]), seed=int(data.get("seed", 0)),
                   seconds=float(data.get("seconds", 0.0)))

    def heatmap(self, title: str | None = None) -> Figure:
        """Accuracy per corruption (rows, in groups) and severity (columns), each cell annotated.

        The colour scale is fixed at 0..100 %, so two runs' heat maps compare by eye.
        """
        names = list(self.table)
        values = np.array([self.table[n] for n in names]) * 100
        means = np.array([[m * 100] for m in self.corruption_means.values()])
        fig = plots.LabFigure(figsize=(3.2 + 0.85 * (len(self.severities) + 1), 1.3 + 0.36 * len(names)),
                     layout="constrained")
        ax, mean_ax = fig.subplots(1, 2, width_ratios=[len(self.severities), 1], sharey=True)
        for axis, cells, labels in ((ax, values, [str(s) for s in self.severities]),
                                    (mean_ax, means, ["mean"])):
            axis.imshow(cells, cmap="viridis", vmin=0, vmax=100, aspect="auto")
            axis.set_xticks(range(len(labels)), labels)
            for (i, j), value in np.ndenumerate(cells):
                axis.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=9,
                          color="black" if value > 60 else "white")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("severity")
        # a line between groups: noise | blur | weather | digital
        group_of = [next(g for g, members in GROUPS.items() if n in members) for n in names]
        for i in range(1, len(names)):
            if group_of[i] != group_of[i - 1]:
                for axis in (ax, mean_ax):
                    axis.axhline(i - 0.5, color="white", linewidth=2)
        heading = title or "Accuracy (%) under corruption"
        fig.suptitle(f"{heading}\nclean {self.clean_acc:.1%}, mean corrupted {self.mean_acc:.1%}, "
                     f"relative drop {self.relative_drop:.0%} ({self.n_images:,} images)", fontsize=11)
        return fig

    def write(self, folder: str | Path, title: str | None = None) -> list[Path]:
        """robustness.csv, robustness.json and robustness.png in `folder`, each written atomically."""
        folder = Path(folder)
        fsio.make_dir(folder)
        paths = [folder / CSV_FILE, folder / JSON_FILE, folder / FIGURE_FILE]
        fsio.write_text(paths[0], self.to_csv())
        fsio.write_json(paths[1], self.to_json())
        fsio.write_bytes(paths[2], plots.to_png(self.heatmap(title)))
        return paths


def load(folder: str | Path) -> Robustness | None:
    """The measurement written to `folder` by `Robustness.write`, or None if there is none."""
    path = Path(folder) / JSON_FILE
    if not path.is_file():
        return None
    try:
        return Robustness.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


def take(images: np.ndarray, labels: np.ndarray, count: int | None,
         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random `count` of the images (all if None or more): the same for every run."""
    if count is None or count >= len(images):
        return images, labels
    keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:count])
    return images[keep], labels[keep]


def measure(model: nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device,
            corruptions: Iterable[str] | None = None, severities: Sequence[int] = SEVERITIES,
            seed: int = 0, batch_size: int = 256, quiet: bool = False) -> Robustness:
    """Clean accuracy and accuracy under each corruption at each severity.

    `images` are uint8 (N, H, W, 3), `labels` their classes. Each (corruption, severity) corrupts
    all images at once (a few seconds for 5,000 on a CPU), then predicts them in batches.
    """
    return measure_many({"model": model}, images, labels, device, corruptions, severities, seed,
                        batch_size, quiet)["model"]


def measure_many(models: Mapping[str, nn.Module], images: np.ndarray, labels: np.ndarray,
                 device: torch.device, corruptions: Iterable[str] | None = None,
                 severities: Sequence[int] = SEVERITIES, seed: int = 0, batch_size: int = 256,
                 quiet: bool = False) -> dict[str, Robustness]:
    """`measure` for several models on the same corrupted images, each made once for all.

    On a GPU making the corruptions costs more than predicting them, so comparing k models this
    way takes about 1/k of the time of k separate measurements. `seconds` is the shared total.
    """
    names = list(CORRUPTIONS if corruptions is None else corruptions)
    severities = tuple(severities)
    if not names or not severities or not models:
        raise UserError("measure needs at least one model, one corruption and one severity")
    for name in names:
        for severity in severities:
            check(name, severity)
    labels = np.asarray(labels)
    if len(images) == 0 or len(images) != len(labels):
        raise UserError(f"measure needs as many labels as images, and some: got {len(images)} "
                        f"images and {len(labels)} labels")
    start = time.perf_counter()
    truth = torch.as_tensor(labels)

    def accuracies(batch: np.ndarray) -> dict[str, float]:
        return {key: (predict_logits(model, batch, device, batch_size=batch_size).argmax(1) == truth)
                .float().mean().item() for key, model in models.items()}

    clean = accuracies(images)
    tables: dict[str, dict[str, list[float]]] = {key: {} for key in models}
    with tqdm(total=len(names) * len(severities), desc="robustness", unit="cell",
              disable=quiet, leave=False) as bar:
        for name in names:
            for key in models:
                tables[key][name] = []
            for severity in severities:
                bar.set_postfix_str(f"{name} {severity}")
                for key, acc in accuracies(corrupt(images, name, severity, seed)).items():
                    tables[key][name].append(acc)
                bar.update()
    seconds = time.perf_counter() - start
    return {key: Robustness(clean_acc=clean[key], table=tables[key], severities=severities,
                            n_images=len(images), seed=seed, seconds=seconds) for key in models}


def markdown_table(results: Sequence[tuple[str, Robustness]]) -> str:
    """One row per labelled result: clean, mean corrupted, relative drop and the group means."""
    groups = [g for g in GROUPS if any(g in r.group_means for _, r in results)]
    header = ["run", "clean", "mean corrupted", "relative drop", *groups]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, result in results:
        cells = [label, f"{result.clean_acc:.1%}", f"{result.mean_acc:.1%}",
                 f"{result.relative_drop:.1%}",
                 *(f"{result.group_means[g]:.1%}" if g in result.group_means else "" for g in groups)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_figure(results: Sequence[tuple[str, Robustness]], title: str | None = None) -> Figure:
    """Mean accuracy per corruption (over severities), one bar per labelled result in each group;
    the clean accuracy first."""
    names = ["clean", *dict.fromkeys(n for _, r in results for n in r.table)]
    width = 1.5 + len(names) * (0.35 + 0.12 * len(results))  # 16 groups of 4 bars: 14 inches
    fig = plots.LabFigure(figsize=(max(7.0, width), 5.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(results))
    for k, (label, result) in enumerate(results):
        means = result.corruption_means
        values = [result.clean_acc, *(means.get(n, np.nan) for n in names[1:])]
        ax.bar(np.arange(len(names)) + (k - (len(results) - 1) / 2) * width, values, width,
               label=f"{label}: clean {result.clean_acc:.1%}, corrupted {result.mean_acc:.1%}")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", rotation_mode="anchor")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set(ylabel="accuracy (mean over severities)", ylim=(0, 1),
           title=title or "Accuracy under each corruption")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=9)
    return fig
