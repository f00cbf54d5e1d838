"""`cifarlab report`: what a run learned, what it gets wrong, and one page that shows it all.

    cifarlab report runs/seed-base                      # writes runs/seed-base/report/
    cifarlab report runs/seed-base runs/seed-robust     # one report per run
    cifarlab report runs/seed-base --out /tmp/base-report   # --split test: sources with a test split

For each run: curves.png, confusion_matrix.png + confusion.json, samples.png, mistakes.png,
reliability.png (and, past 20 classes, confusion_summary.png: the most confused pairs and the
hardest classes, which a 100 x 100 matrix cannot show at page width), metrics.json (per-class
precision/recall/F1, most confused pairs, ECE, the diagnosis) and report.html, one self-contained
page with all of it. Everything that needs the model (all but the curves and the diagnosis) needs
`model.pt`; for an unfinished run without one those parts are skipped and the page says so.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cifarlab import fsio, plots, rundir
from cifarlab.calibrate import BINS as CALIBRATION_BINS
from cifarlab.calibrate import calibration
from cifarlab.checkpoint import ModelArg
from cifarlab.data import Dataset
from cifarlab.diagnose import Diagnosis
from cifarlab.display import table
from cifarlab.evaluate import Predictions, confusion_counts, predict_split, scores
from cifarlab.history import evaluated
from cifarlab.rundir import RunFiles
from cifarlab.rundir import read as read_run
from cifarlab.text import plural

REPORT_DIRNAME = rundir.REPORT
SAMPLE_COUNT = 24  # random images in samples.png (4 rows of 6: readable captions on a phone)
SAMPLE_SEED = 0  # the same images in every report on a split, so two runs' grids compare
MISTAKE_COUNT = 24  # most confident wrong predictions in mistakes.png


# ---------------------------------------------------------------------------------------------
# The figures (scores and predictions come from evaluate.py)


def confusion_figure(p: Predictions) -> Figure:
    counts = confusion_counts(p.labels, p.probs.argmax(1), len(p.classes))
    return plots.confusion(counts, p.classes, f"Confusion matrix: {p.where}")


def confusion_summary_figure(p: Predictions) -> Figure:
    """The most confused pairs and the hardest classes: the confusion matrix of many classes, read."""
    counts = confusion_counts(p.labels, p.probs.argmax(1), len(p.classes))
    return plots.confusion_summary(counts, p.classes, f"What the model confuses: {p.where}")


def reliability_figure(p: Predictions) -> Figure:
    probs = p.probs
    calib = calibration(probs.max(1), probs.argmax(1) == p.labels)
    return plots.reliability(calib, f"Reliability diagram: {p.where}")


def samples_figure(p: Predictions, count: int = SAMPLE_COUNT, seed: int = SAMPLE_SEED) -> Figure:
    """Random images of the split with prediction (confidence) and true class."""
    probs = p.probs
    predictions, confidence = probs.argmax(1), probs.max(1)
    correct = predictions == p.labels
    sample = np.random.default_rng(seed).permutation(len(p.labels))[:count]
    return plots.image_grid(
        p.images[sample], [_caption(p.classes, p.labels[i], predictions[i], confidence[i])
                           for i in sample], correct[sample].tolist(),
        f"{len(sample)} random {p.split} images: prediction (confidence) and true class; "
        f"{int(correct[sample].sum())} right (green ✓), {int((~correct[sample]).sum())} wrong (red ✗)")


def mistakes_figure(p: Predictions, count: int = MISTAKE_COUNT) -> Figure:
    """The most confident wrong predictions."""
    probs = p.probs
    predictions, confidence = probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(predictions != p.labels)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    return plots.image_grid(
        p.images[worst], [_caption(p.classes, p.labels[i], predictions[i], confidence[i])
                          for i in worst], [False] * len(worst),
        f"The {len(worst)} most confident wrong predictions on {p.split} (of {len(wrong):,} wrong): "
        "prediction (confidence) and true class" if len(wrong) else f"No wrong predictions on {p.split}")


def curves_figure(run: RunFiles) -> Figure:
    diagnosis = run.diagnosis()
    return plots.curves(run.history, f"Learning curves: {run.label}, diagnosis: {diagnosis.verdict}",
                        diagnosis.best_val_loss_epoch)


@dataclass
class Report:
    """A written report: where (`path` is report.html, `out` its folder), and what it found."""

    out: Path
    diagnosis: Diagnosis
    evaluation: dict[str, Any] | None  # None when the model-based parts were skipped
    skipped: str | None  # why they were skipped
    files: list[str]

    @property
    def path(self) -> Path:
        return self.out / "report.html"

    def __fspath__(self) -> str:  # a Report is where its page is: open(report), Path(report)
        return str(self.path)

    def __repr__(self) -> str:
        return f"Report({str(self.path)!r}: {self.diagnosis.verdict}, {len(self.files)} files)"


def write_report(run: RunFiles | str | Path, out: str | Path | None = None,
                 data: str | Dataset | None = None, split: str | None = None,
                 device: str = "auto", quiet: bool = False,
                 weights: str = "best", tta: bool = False, model: ModelArg = None) -> Report:
    """Write a run's report files into `out` (default RUN_DIR/report/); the Python form of the CLI.
    In a folder of the user's (`out`), files cifarlab did not write are never replaced."""
    run = run if isinstance(run, RunFiles) else read_run(run)
    owned = out is None  # RUN/report/ is cifarlab's; in a folder of the user's, see fsio.write_outputs
    # RUN/report: checked now, before the work, and never a link to a folder of the user's
    out = Path(out) if out is not None else rundir.output_folder(run.path, REPORT_DIRNAME)
    diagnosis = run.diagnosis()
    figures: dict[str, Figure] = {"curves.png": curves_figure(run)}
    evaluation: dict[str, Any] | None = None
    skipped = None
    no_val = split in (None, "val") and data is None and float(run.config.get("val_fraction", 0.1)) == 0
    if no_val:
        skipped = ("this run kept no validation images (--val-fraction 0), so the confusion matrix, "
                   "per-class scores, calibration and sample predictions were skipped; draw them on "
                   f"another split: cifarlab report {run.path} --split train (or --split test --data "
                   "SRC with a test split)")
    elif (run.path / rundir.FINAL).is_file():
        p = predict_split(run, data, split, device, weights, tta, model, quiet)
        evaluation = scores(p)
        if len(p.classes) > plots.ANNOTATE_MAX_CLASSES:
            figures["confusion_summary.png"] = confusion_summary_figure(p)
        figures.update({"confusion_matrix.png": confusion_figure(p),
                        "reliability.png": reliability_figure(p),
                        "samples.png": samples_figure(p), "mistakes.png": mistakes_figure(p)})
    else:
        skipped = (f"{run.path} has no {rundir.FINAL} (an unfinished run?), so the confusion matrix, "
                   "per-class scores, calibration and sample predictions were skipped; finish the run "
                   f"with: cifarlab train --resume {run.path}")
    contents = {name: plots.to_png(fig) for name, fig in figures.items()}
    pngs = dict(contents)
    metrics: dict[str, Any] = {"run": str(run.path), "diagnosis": diagnosis.to_dict()}
    if evaluation is not None:
        contents["confusion.json"] = _json_bytes(evaluation["confusion"])
        metrics.update({k: v for k, v in evaluation.items() if k != "confusion"})
    else:
        metrics["skipped"] = skipped
    contents["metrics.json"] = _json_bytes(metrics)
    contents["report.html"] = render_html(run, diagnosis, evaluation, skipped, pngs).encode()
    fsio.write_outputs(out, contents, owned=owned)
    return Report(out, diagnosis, evaluation, skipped, list(contents))


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _caption(classes: list[str], true: int, predicted: int, confidence: float) -> str:
    mark = "✓" if true == predicted else "✗"
    return (f"{mark} pred: {plots.short(classes[predicted], 18)} ({confidence:.0%})\n"
            f"true: {plots.short(classes[true], 18)}")


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
.good-generalization { background: #1a7f37; } .no-validation { background: #57606a; }
.still-learning { background: #8250df; } .not-enough-evidence { background: #57606a; }
.diverged { background: #cf222e; }
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


def render_html(run: RunFiles, diagnosis: Diagnosis, evaluation: dict[str, Any] | None,
                skipped: str | None, figures: dict[str, bytes]) -> str:
    """One self-contained page: images inline as base64, no script, nothing fetched from a network."""
    e = html.escape
    history, last = run.history, run.history[-1]
    scored = evaluated(history)  # epochs with a val accuracy (all, unless evaluation was skipped)
    has_val = bool(scored)  # --val-fraction 0: no val figures
    measured = scored[-1] if scored else last
    best = max(scored, key=lambda row: row["val_acc"]) if has_val else last
    lowest = min(scored, key=lambda row: row["val_loss"]) if has_val else last
    at = f" (epoch {measured['epoch']:.0f})" if measured is not last else ""
    config = run.config

    def figure(name: str, caption: str) -> str:
        data = base64.b64encode(figures[name]).decode()
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{e(caption)}">'
                f"<figcaption>{e(caption)}</figcaption></figure>")

    final = [
        ("epochs", f"{len(history)}" + (f" ({len(scored)} evaluated)"
                                         if has_val and len(scored) != len(history) else "")),
        ("train loss (running)", f"{last['train_loss']:.4g}"),
        ("train accuracy (running, as Keras reports it)", f"{last['train_acc']:.2%}"),
        (f"train accuracy (clean, eval mode){at}", f"{measured['train_acc_clean']:.2%}"),
        (f"val loss{at}", f"{measured['val_loss']:.4f}"),
        (f"val accuracy{at}", f"{measured['val_acc']:.2%}"),
        ("gap (clean train − val)", f"{(measured['train_acc_clean'] - measured['val_acc']) * 100:+.1f} "
                                    "points"),
        ("best val accuracy", f"{best['val_acc']:.2%} (epoch {best['epoch']:.0f})"),
        ("lowest val loss", f"{lowest['val_loss']:.4f} (epoch {lowest['epoch']:.0f})"),
        ("seconds per epoch", f"{np.mean([r['seconds'] for r in history]):.1f}"),
    ]
    if not has_val:
        val_rows = {"val loss", "val accuracy", "gap (clean train − val)", "best val accuracy",
                    "lowest val loss"}
        final = [row for row in final if row[0] not in val_rows]
        final[3] = ("train accuracy (clean, eval mode)", f"{last['train_acc_clean']:.2%}")
        final.insert(4, ("validation", "none: --val-fraction 0, the final fit on all training images"))
    if evaluation is not None:
        final += [
            (f"{evaluation['split']} accuracy of the {evaluation['weights']} weights"
             + (f" (epoch {evaluation['epoch']})" if evaluation.get("epoch") else "")
             + (", with TTA" if evaluation.get("tta") else "")
             + f" ({evaluation['images']:,} images, below)",
             f"{evaluation['accuracy']:.2%}"),
            ("macro F1", f"{evaluation['macro_avg']['f1']:.3f}"),
            ("expected calibration error (ECE)", f"{evaluation['ece']:.3f}"),
        ]
    parts = [
        f"<h1>cifarlab report: {e(run.name)}</h1>",
        f'<p class="sub">recipe {e(str(config.get("recipe", "?")))}, model '
        f'{e(str(config.get("model", "?")))}, {plural(len(history), "epoch")}; run directory '
        f"{e(str(run.path))}</p>",
        "<h2>Diagnosis</h2>",
        f'<div class="diagnosis"><p><span class="verdict {diagnosis.verdict.replace(" ", "-")}">'
        f"{e(diagnosis.verdict)}</span> {e(diagnosis.reason)}</p><ul>"
        + "".join(f"<li>{e(line.strip())}</li>" for line in diagnosis.lines()[1:])
        + '</ul><p class="note">The rule, in order: diverged if the loss blew up; not enough evidence '
        "if the val images are too few to measure the gap; still learning while val accuracy rises "
        "beyond its noise and val loss is at its lowest; overfitting if the gap (clean train − val "
        "accuracy) is beyond its noise and the val curve has turned; underfitting if the clean train "
        "accuracy is less than halfway from chance to 100%; good generalization otherwise. "
        "“Beyond its noise” means more than 2 standard errors for these sample sizes "
        "(docs/diagnosis.md).</p></div>",
        "<h2>Final metrics</h2>",
        table(["metric", "value"], final, kinds="tn"),
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
        if "confusion_summary.png" in figures:  # many classes: the summary reads, the matrix zooms
            count = len(evaluation["per_class"])
            parts += [
                f"<h2>What the model confuses ({e(split)})</h2>",
                figure("confusion_summary.png", "Left: the (true, predicted) pairs the model mixes "
                       "up most, as a share of the true class. Right: the classes it gets right "
                       "least often; the dotted line is the mean over all classes."),
                f"<h2>Confusion matrix ({e(split)}, {count} classes)</h2>",
                '<a href="confusion_matrix.png">'
                + figure("confusion_matrix.png", f"Rows are the true classes, columns the predicted "
                         f"ones; each row's mistakes as a share of its class, the right answers "
                         f"(the diagonal) grey. {count} classes are too many to read at page width: "
                         "click the image (or open confusion_matrix.png) for the full size.")
                + "</a>",
            ]
        else:
            parts += [
                f"<h2>Confusion matrix ({e(split)})</h2>",
                figure("confusion_matrix.png", "Rows are the true classes, columns the predicted "
                       "ones; the diagonal holds the right answers. Right: each row as a share of "
                       "its class."),
            ]
        parts += [
            "<h2>Per-class scores</h2>",
            table(["class", "precision", "recall", "F1", "images"], per_class, kinds="tnnnn"),
            "<h2>Most confused pairs</h2>",
            table(["true class", "predicted as", "images", "share of the true class"], pairs,
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
    versions = run.info.get("versions", {})
    settings += [("classes", ", ".join(run.info.get("classes", []))),
                 ("train / val images", f"{run.info.get('train_images', '?')} / "
                                        f"{run.info.get('val_images', '?')}"),
                 ("ran on", f"{run.info.get('device', '?')}, {run.info.get('threads', '?')} threads"),
                 ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
                 ("command", str(run.info.get("command", "?")))]
    parts += _understanding(run)
    parts += ["<h2>Configuration</h2>", table(["setting", "value"], settings, kinds="tl")]
    return page(f"cifarlab report: {run.name}", parts)


EXPLAIN_CAPTIONS = {
    "filters": "The first layer's filters: what the network looks for at the first step (colour "
               "blobs and edges when it learned well).",
    "feature_maps": "The strongest feature maps at a few depths: edges near the input, parts and "
                    "textures deeper down.",
    "gradcam_correct": "Grad-CAM: where the last conv layer looked for its most confident right "
                       "answers (red = most evidence for the predicted class).",
    "gradcam_wrong": "Grad-CAM for its most confident mistakes: what did it look at when it got "
                     "the class wrong?",
    "gradcam": "Grad-CAM on your images, for the predicted class (their true class is unknown, so the "
               "captions are neither green nor red).",
}


def _understanding(run: RunFiles) -> list[str]:
    """The explain and robustness sections, where `cifarlab explain` / `robustness` wrote files."""
    from cifarlab import robustness

    e, parts = html.escape, []

    def embed(path: Path, caption: str) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{e(caption)}">'
                f"<figcaption>{e(caption)}</figcaption></figure>")

    explain_dir = rundir.found_output_folder(run.path, rundir.EXPLAIN)
    explained = [explain_dir / f"{name}.png" for name in EXPLAIN_CAPTIONS] if explain_dir else []
    explained = [p for p in explained if _embeddable(p)]
    if explained:
        parts.append("<h2>What the network learned (cifarlab explain)</h2>")
        parts += [embed(p, EXPLAIN_CAPTIONS[p.stem]) for p in explained]
    robust_dir = rundir.found_output_folder(run.path, rundir.ROBUSTNESS)
    result = robustness.load(robust_dir) if robust_dir else None
    if result is not None:
        rows = [("clean", f"{result.clean_acc:.1%}"), ("mean under corruption", f"{result.mean_acc:.1%}"),
                ("relative drop", f"{result.relative_drop:.1%}")]
        rows += [(f"{group} (mean)", f"{value:.1%}") for group, value in result.group_means.items()]
        parts += ["<h2>Robustness to common corruptions (cifarlab robustness)</h2>",
                  f"<p>{result.n_images:,} images, 15 CIFAR-10-C corruptions at severities "
                  f"{', '.join(map(str, result.severities))} (docs/robustness.md).</p>",
                  table(["measure", "accuracy"], rows, kinds="tn")]
        heat = robust_dir / "robustness.png" if robust_dir else None
        if heat is not None and _embeddable(heat):
            parts.append(embed(heat, "Accuracy per corruption and severity."))
    return parts


MAX_EMBED_BYTES = 16 << 20  # a figure cifarlab draws is 50-500 KB


def _embeddable(path: Path) -> bool:
    """A figure `explain` or `robustness` wrote, to embed in the page: a regular file (not a
    link, which could point at any file of the user's) of a figure's size."""
    return (not path.is_symlink() and path.is_file()
            and path.stat().st_size <= MAX_EMBED_BYTES)


def page(title: str, parts: Sequence[str]) -> str:
    """One self-contained HTML page (report, search): our CSS, the parts in order, no scripts."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
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
