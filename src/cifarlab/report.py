"""`cifarlab report`: what a run learned, what it gets wrong, and one page that shows it all.

    cifarlab report runs/seed-base                      # writes runs/seed-base/report/
    cifarlab report runs/seed-base runs/seed-robust     # one report per run
    cifarlab report runs/seed-base --out /tmp/base-report   # --split test: sources with a test split

For each run: curves.png, confusion_matrix.png + confusion.json, samples.png, mistakes.png,
reliability.png, metrics.json (per-class precision/recall/F1, most confused pairs, ECE, the
diagnosis) and report.html, one self-contained page with all of it. Everything that needs the model
(all but the curves and the diagnosis) needs `model.pt`; for an unfinished run without one those
parts are skipped and the page says so.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cifarlab import fsio, plots
from cifarlab.checkpoint import MODEL_FILE, load_model
from cifarlab.data import Split, load_dataset, make_splits
from cifarlab.diagnose import Diagnosis, diagnose
from cifarlab.errors import UserError
from cifarlab.evaluate import predict_logits
from cifarlab.train import METRIC_COLUMNS, pick_device

REPORT_DIRNAME = "report"
SAMPLE_COUNT = 24  # random images in samples.png (4 rows of 6: readable captions on a phone)
SAMPLE_SEED = 0  # the same images in every report on a split, so two runs' grids compare
MISTAKE_COUNT = 24  # most confident wrong predictions in mistakes.png
CALIBRATION_BINS = 15  # the usual ECE binning since Guo et al. 2017, "On Calibration of Modern NNs"
CONFUSED_PAIRS = 5  # (true, predicted) pairs listed as most confused


# ---------------------------------------------------------------------------------------------
# Reading a run directory


@dataclass
class Run:
    path: Path
    record: dict[str, Any]  # config.json: {"config": {...}, "classes": [...], ...}
    history: list[dict[str, float]]  # metrics.csv, one row per epoch

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.record.get("config", {}))

    @property
    def model_recipe(self) -> str:
        """"base" where model and recipe share a name, else "model/recipe" ("base_dropout/robust")."""
        recipe, model = self.config.get("recipe", "?"), self.config.get("model", "?")
        return recipe if recipe == model else f"{model}/{recipe}"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.model_recipe})"


def read_run(path: str | Path) -> Run:
    """A run's config and metric history; a path that is not a run is a one-line UserError."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    if not (path / "metrics.csv").is_file():
        raise UserError(f"{path} is not a cifarlab run: it has no metrics.csv "
                        "(run directories are written by cifarlab train)")
    config_file = path / "config.json"
    try:
        record = json.loads(config_file.read_text()) if config_file.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {config_file}: {exc}") from exc
    return Run(path, record, read_history(path / "metrics.csv"))


def read_history(file: Path) -> list[dict[str, float]]:
    try:
        with file.open(newline="") as handle:
            history = [{key: float(row[key]) for key in METRIC_COLUMNS} for row in csv.DictReader(handle)]
    except KeyError as exc:
        raise UserError(f"{file} has no column {exc}; is it from an older cifarlab?") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from exc
    if not history:
        raise UserError(f"{file} has no finished epoch yet")
    return history


def evaluation_split(record: dict[str, Any], data: str | None, split: str | None,
                     quiet: bool = False) -> tuple[str, Split]:
    """The split a model is judged on: by default the run's own data and its val carve-out."""
    config = record.get("config", {})
    dataset = load_dataset(data or config.get("data"), quiet=quiet)
    if dataset.classes != record["classes"]:
        raise UserError(f"the data's classes {dataset.classes} differ from the model's "
                        f"{record['classes']}")
    splits = make_splits(dataset, float(config.get("val_fraction", 0.1)),
                         int(config.get("split_seed", 0)))
    name = split or ("test" if "test" in splits else "val")
    if name not in splits:
        raise UserError(f"{dataset.source} has no '{name}' split (available: {', '.join(splits)})")
    return name, splits[name]


# ---------------------------------------------------------------------------------------------
# Scores from predictions (pure functions of arrays)


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    flat = labels.astype(np.int64) * num_classes + predictions
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def class_scores(counts: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 per class; 0 where a class is never predicted or never present."""
    right = np.diag(counts).astype(np.float64)
    predicted, support = counts.sum(0), counts.sum(1)
    precision = np.divide(right, predicted, out=np.zeros_like(right), where=predicted > 0)
    recall = np.divide(right, support, out=np.zeros_like(right), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(right), where=total > 0)
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])} for i, name in enumerate(classes)}


def most_confused(counts: np.ndarray, classes: list[str], top: int = CONFUSED_PAIRS) -> list[dict[str, Any]]:
    """The largest off-diagonal cells: which true class is most often taken for which other one."""
    off = counts.copy()
    np.fill_diagonal(off, 0)
    support = counts.sum(1)
    pairs = []
    for flat in np.argsort(off, axis=None, kind="stable")[::-1][:top]:
        i, j = divmod(int(flat), len(classes))
        if off[i, j] == 0:
            break
        pairs.append({"true": classes[i], "predicted": classes[j], "count": int(off[i, j]),
                      "share_of_true": float(off[i, j] / support[i])})
    return pairs


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Reliability bins over (0, 1] and the expected calibration error.

    ECE = sum over bins of (share of images in the bin) * |accuracy in bin - mean confidence in bin|:
    how far, on average, the model's stated confidence is from how often it is right.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.digitize(confidence, edges[1:-1], right=True)
    count = np.bincount(index, minlength=bins)
    safe = np.maximum(count, 1)
    accuracy = np.bincount(index, weights=correct.astype(np.float64), minlength=bins) / safe
    mean_conf = np.bincount(index, weights=confidence.astype(np.float64), minlength=bins) / safe
    ece = float(np.sum(count / max(1, len(confidence)) * np.abs(accuracy - mean_conf)))
    return {"ece": ece, "bin_edges": edges.tolist(), "accuracy": accuracy.tolist(),
            "confidence": mean_conf.tolist(), "count": count.tolist()}


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class Report:
    out: Path
    diagnosis: Diagnosis
    evaluation: dict[str, Any] | None  # None when the model-based parts were skipped
    skipped: str | None  # why they were skipped
    files: list[str]


def write_report(run: Run | str | Path, out: str | Path | None = None, data: str | None = None,
                 split: str = "val", device: str = "auto", quiet: bool = False) -> Report:
    """Write a run's report files into `out` (default RUN_DIR/report/); the Python form of the CLI.
    In a folder of the user's (`out`), files cifarlab did not write are never replaced."""
    run = run if isinstance(run, Run) else read_run(run)
    owned = out is None  # RUN/report/ is cifarlab's; in a folder of the user's, see fsio.write_outputs
    out = Path(out) if out is not None else run.path / REPORT_DIRNAME
    diagnosis = diagnose(run.history)
    figures = {"curves.png": plots.curves(
        run.history, f"Learning curves: {run.label}, diagnosis: {diagnosis.verdict}",
        diagnosis.best_val_loss_epoch)}
    evaluation: dict[str, Any] | None = None
    skipped = None
    if (run.path / MODEL_FILE).is_file():
        evaluation = _evaluate(run, data, split, device, quiet, figures)
    else:
        skipped = (f"{run.path} has no {MODEL_FILE} (an unfinished run?), so the confusion matrix, "
                   "per-class scores, calibration and sample predictions were skipped; finish the run "
                   f"with: cifarlab train --resume {run.path}")
    contents = dict(figures)
    metrics: dict[str, Any] = {"run": str(run.path), "diagnosis": diagnosis.to_dict()}
    if evaluation is not None:
        contents["confusion.json"] = _json_bytes(evaluation["confusion"])
        metrics.update({k: v for k, v in evaluation.items() if k != "confusion"})
    else:
        metrics["skipped"] = skipped
    contents["metrics.json"] = _json_bytes(metrics)
    contents["report.html"] = render_html(run, diagnosis, evaluation, skipped, figures).encode()
    fsio.write_outputs(out, contents, owned=owned)
    return Report(out, diagnosis, evaluation, skipped, list(contents))


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _evaluate(run: Run, data: str | None, split: str, device_name: str, quiet: bool,
              figures: dict[str, bytes]) -> dict[str, Any]:
    """Predict the split once; add the model-based figures to `figures`; return the scores."""
    device = pick_device(device_name)
    model, record = load_model(run.path)
    classes: list[str] = record["classes"]
    split, part = evaluation_split(record, data, split, quiet=quiet)
    logits = predict_logits(model.to(device), part.images, device)
    labels = torch.as_tensor(part.labels)
    probs = logits.softmax(1).numpy()
    predictions = probs.argmax(1)
    confidence = probs.max(1)
    correct = predictions == part.labels
    counts = confusion_counts(part.labels, predictions, len(classes))
    scores = class_scores(counts, classes)
    calib = calibration(confidence, correct)
    where = f"{run.label}, {split} split ({len(part):,} images)"

    figures["confusion_matrix.png"] = plots.confusion(counts, classes, f"Confusion matrix: {where}")
    figures["reliability.png"] = plots.reliability(calib, f"Reliability diagram: {where}")
    sample = np.random.default_rng(SAMPLE_SEED).permutation(len(part))[:SAMPLE_COUNT]
    figures["samples.png"] = plots.image_grid(
        part.images[sample], [_caption(classes, part.labels[i], predictions[i], confidence[i])
                              for i in sample], correct[sample].tolist(),
        f"{len(sample)} random {split} images: prediction (confidence) and true class; "
        f"{int(correct[sample].sum())} right (green ✓), {int((~correct[sample]).sum())} wrong (red ✗)")
    wrong = np.flatnonzero(~correct)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:MISTAKE_COUNT]
    figures["mistakes.png"] = plots.image_grid(
        part.images[worst], [_caption(classes, part.labels[i], predictions[i], confidence[i])
                             for i in worst], [False] * len(worst),
        f"The {len(worst)} most confident wrong predictions on {split} (of {len(wrong):,} wrong): "
        "prediction (confidence) and true class" if len(wrong) else f"No wrong predictions on {split}")

    macro = {key: float(np.mean([s[key] for s in scores.values()])) for key in ("precision", "recall", "f1")}
    return {
        "split": split, "images": len(part), "accuracy": float(correct.mean()),
        "loss": float(F.cross_entropy(logits, labels).item()), "ece": calib["ece"],
        "macro_avg": macro, "per_class": scores, "most_confused": most_confused(counts, classes),
        "calibration": calib,
        "confusion": {"split": split, "classes": classes, "rows": "true class", "columns": "predicted",
                      "counts": counts.tolist(),
                      "row_normalized": (counts / np.maximum(counts.sum(1, keepdims=True), 1)).tolist()},
    }


def _caption(classes: list[str], true: int, predicted: int, confidence: float) -> str:
    mark = "✓" if true == predicted else "✗"
    return f"{mark} pred: {classes[predicted]} ({confidence:.0%})\ntrue: {classes[true]}"


# ---------------------------------------------------------------------------------------------
# The page

CSS = """
:root { color-scheme: light; }
body { margin: 0; padding: 1rem; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto,
       "DejaVu Sans", sans-serif; color: #1f2328; background: #fff; }
main { max-width: 1100px; margin: 0 auto; }
h1 { font-size: 1.6rem; margin: 0 0 .2rem; overflow-wrap: anywhere; }
h2 { font-size: 1.25rem; margin: 2rem 0 .5rem; border-bottom: 1px solid #d0d7de; }
.sub, figcaption, .note { color: #57606a; font-size: .92rem; }
.verdict { display: inline-block; padding: .1rem .6rem; border-radius: 1rem; color: #fff;
           font-weight: 600; }
.overfitting { background: #bc4c00; } .underfitting { background: #0969da; }
.good-generalization { background: #1a7f37; }
.diagnosis { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .6rem 1rem; }
.diagnosis ul { margin: .3rem 0; padding-left: 1.2rem; }
.skipped { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: .6rem 1rem; }
figure { margin: 1rem 0; }
img { display: block; max-width: 100%; height: auto; border: 1px solid #eaeef2; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: .25rem .7rem; border-bottom: 1px solid #d0d7de; text-align: left;
         vertical-align: top; }
.num { text-align: right; }
td.num { white-space: nowrap; }
.long { overflow-wrap: anywhere; }
@media (max-width: 600px) {
  body { padding: .6rem; font-size: 15px; }
  h1 { font-size: 1.3rem; }
  th, td { padding: .2rem .35rem; }
  table { font-size: .9rem; }
}
"""


def render_html(run: Run, diagnosis: Diagnosis, evaluation: dict[str, Any] | None,
                skipped: str | None, figures: dict[str, bytes]) -> str:
    """One self-contained page: images inline as base64, no script, nothing fetched from a network."""
    e = html.escape
    history, last = run.history, run.history[-1]
    best = max(history, key=lambda row: row["val_acc"])
    config = run.config

    def figure(name: str, caption: str) -> str:
        data = base64.b64encode(figures[name]).decode()
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{e(caption)}">'
                f"<figcaption>{e(caption)}</figcaption></figure>")

    final = [
        ("epochs", f"{len(history)}"),
        ("train loss (running)", f"{last['train_loss']:.4f}"),
        ("train accuracy (running, as Keras reports it)", f"{last['train_acc']:.2%}"),
        ("train accuracy (clean, eval mode)", f"{last['train_acc_clean']:.2%}"),
        ("val loss", f"{last['val_loss']:.4f}"),
        ("val accuracy", f"{last['val_acc']:.2%}"),
        ("gap (clean train − val)", f"{diagnosis.gap * 100:+.1f} points"),
        ("best val accuracy", f"{best['val_acc']:.2%} (epoch {best['epoch']:.0f})"),
        ("lowest val loss", f"{diagnosis.best_val_loss:.4f} (epoch {diagnosis.best_val_loss_epoch})"),
        ("seconds per epoch", f"{np.mean([r['seconds'] for r in history]):.1f}"),
    ]
    if evaluation is not None:
        final += [
            (f"{evaluation['split']} accuracy of model.pt ({evaluation['images']:,} images, below)",
             f"{evaluation['accuracy']:.2%}"),
            ("macro F1", f"{evaluation['macro_avg']['f1']:.3f}"),
            ("expected calibration error (ECE)", f"{evaluation['ece']:.3f}"),
        ]
    parts = [
        f"<h1>cifarlab report: {e(run.name)}</h1>",
        f'<p class="sub">recipe {e(str(config.get("recipe", "?")))}, model '
        f'{e(str(config.get("model", "?")))}, {len(history)} epoch(s); run directory '
        f"{e(str(run.path))}</p>",
        "<h2>Diagnosis</h2>",
        f'<div class="diagnosis"><p><span class="verdict {diagnosis.verdict.replace(" ", "-")}">'
        f"{e(diagnosis.verdict)}</span> {e(diagnosis.reason)}</p><ul>"
        + "".join(f"<li>{e(line.strip())}</li>" for line in diagnosis.lines()[1:])
        + '</ul><p class="note">The rule: overfitting if clean train accuracy exceeds val accuracy by '
        "more than the threshold; underfitting if both are below the low-accuracy threshold; good "
        "generalization otherwise (docs/diagnosis.md).</p></div>",
        "<h2>Final metrics</h2>",
        _table(["metric", "value"], final, kinds="tn"),
        "<h2>Learning curves</h2>",
        figure("curves.png", "Loss and accuracy per epoch. The running train accuracy (dashed) is "
               "measured with dropout and augmentation active while the weights change, so it can "
               "sit below val accuracy; the clean train accuracy (eval mode) is what the diagnosis "
               "compares with val. The shaded band is the gap."),
    ]
    if evaluation is None:
        parts.append(f'<h2>Model-based parts</h2><p class="skipped"><strong>Skipped.</strong> '
                     f"{e(skipped or '')}</p>")
    else:
        split = evaluation["split"]
        per_class = [(name, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}",
                      f"{s['support']}") for name, s in evaluation["per_class"].items()]
        macro = evaluation["macro_avg"]
        per_class.append(("macro average", f"{macro['precision']:.3f}", f"{macro['recall']:.3f}",
                          f"{macro['f1']:.3f}", f"{evaluation['images']}"))
        pairs = [(p["true"], p["predicted"], f"{p['count']}", f"{p['share_of_true']:.1%}")
                 for p in evaluation["most_confused"]]
        parts += [
            f"<h2>Confusion matrix ({e(split)})</h2>",
            figure("confusion_matrix.png", "Rows are the true classes, columns the predicted ones; "
                   "the diagonal holds the right answers. Right: each row as a share of its class."),
            "<h2>Per-class scores</h2>",
            _table(["class", "precision", "recall", "F1", "images"], per_class, kinds="tnnnn"),
            "<h2>Most confused pairs</h2>",
            _table(["true class", "predicted as", "images", "share of the true class"], pairs,
                   kinds="ttnn") if pairs else "<p>No mistakes.</p>",
            "<h2>Calibration</h2>",
            figure("reliability.png", f"Confidence against accuracy in {CALIBRATION_BINS} bins. Bars "
                   "below the diagonal mean over-confidence. ECE = "
                   f"{evaluation['ece']:.3f}: the average gap, weighted by the images in each bin."),
            "<h2>Sample predictions</h2>",
            figure("samples.png", f"Random {split} images with the predicted class (confidence) and "
                   "the true class; green ✓ right, red ✗ wrong."),
            "<h2>Most confident mistakes</h2>",
            figure("mistakes.png", "The wrong predictions the model was surest of: often look-alike "
                   "classes, sometimes a mislabelled image."),
        ]
    settings = [(key, value if isinstance(value, str) else json.dumps(value))
                for key, value in config.items()]
    versions = run.record.get("versions", {})
    settings += [("classes", ", ".join(run.record.get("classes", []))),
                 ("train / val images", f"{run.record.get('train_images', '?')} / "
                                        f"{run.record.get('val_images', '?')}"),
                 ("ran on", f"{run.record.get('device', '?')}, {run.record.get('threads', '?')} threads"),
                 ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
                 ("command", str(run.record.get("command", "?")))]
    parts += ["<h2>Configuration</h2>", _table(["setting", "value"], settings, kinds="tl")]
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cifarlab report: {e(run.name)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style>
</head>
<body>
<main>
{chr(10).join(parts)}
</main>
</body>
</html>
"""


def _table(header: list[str], rows: Sequence[Sequence[str]], kinds: str) -> str:
    """A table; `kinds` has a letter per column: t text, n number (right, unbroken), l long text."""
    css = {"t": "", "n": " class=num", "l": " class=long"}

    def cell(tag: str, text: str, kind: str) -> str:
        return f"<{tag}{css[kind]}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", h, k) for h, k in zip(header, kinds, strict=True))
    body = "".join("<tr>" + "".join(cell("td", c, k) for c, k in zip(row, kinds, strict=True)) + "</tr>"
                   for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
