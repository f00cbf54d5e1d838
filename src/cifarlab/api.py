"""The Python API: what `import cifarlab as cl` offers, and what every CLI command calls.

    import cifarlab as cl
    run = cl.train("base", data="../shared/data/cifar10-train-jpeg.tgz", epochs=15, out="runs/nb")
    run.history[-1]["val_acc"], run.summary["best_val_acc"]
    run.plot_curves()                    # a matplotlib Figure: shows inline in Jupyter
    run.evaluate(tta=True)               # {"accuracy": ..., "loss": ..., "per_class": ...}
    run.predict("my_cat.jpg", top_k=3)
    cl.compare(["runs/a", "runs/b"]).chart()
    cl.lr_find("base", data=...).suggestion     # the learning-rate range test (lrfind.py)
    cl.search("base", trials=20, epochs=8, data=...).best_config   # Optuna search (hpsearch.py)

Every keyword of `train` is a TrainConfig field (config.py), checked as strictly as the command
line checks `--set`; paths may be str or pathlib.Path. Your own network trains the same way:
`cl.train(model=MyNet(), data=..., epochs=5)`, where MyNet maps N x 3 x 32 x 32 normalised
images to N x classes logits (cifarlab wraps the normalisation around it).
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import nn

from cifarlab import checkpoint, distributed, fsio, plots, rundir
from cifarlab import comparison as comparing
from cifarlab import report as reporting
from cifarlab import trainer as training
from cifarlab.config import Recipe, TrainConfig, list_recipes, resolve
from cifarlab.data import Dataset
from cifarlab.diagnose import Diagnosis, diagnose
from cifarlab.errors import UserError
from cifarlab.evaluate import as_images, pick_device, predict_logits
from cifarlab.evaluate import top_k as top_k_of
from cifarlab.modelsummary import ModelSummary, summarize
from cifarlab.networks import Classifier, create_model, list_models, register_model, spec_of

__all__ = ["Comparison", "Run", "compare", "load", "load_data", "make_config", "models",
           "plot_data", "recipes", "register_model", "resume", "summary", "train", "trials"]

PathLike = str | Path


class Run:
    """A run directory, read back: config, history, summary, the model, and what to do with it.

        >>> import cifarlab as cl
        >>> run = cl.load("runs/nb")                             # doctest: +SKIP
        >>> run.summary["best_val_acc"], run.plot_curves()       # doctest: +SKIP

    `model` is the best weights (by the run's monitor) unless `weights="final"` is asked for.
    A run of your own network needs the network again: `cl.load(path, model=MyNet)`.
    """

    def __init__(self, path: PathLike, model: checkpoint.ModelArg = None):
        self.path = Path(path)
        self._files = _read(self.path)
        self._model_arg = model
        self._models: dict[str, Classifier] = {}
        self._predictions: dict[tuple[Any, ...], reporting.Predictions] = {}

    def __repr__(self) -> str:
        s = self.summary
        if not self.history:
            return f"Run('{self.path}': a model file of {self._files.model_recipe})"
        if math.isnan(self.history[-1]["val_acc"]):  # --val-fraction 0
            return (f"Run('{self.path}': {self._files.model_recipe}, {len(self.history)} epochs, "
                    f"no validation, clean train_acc {self.history[-1]['train_acc_clean']:.4f})")
        found = s.get("best_val_acc")  # None: a summary without it (older, or partly written)
        best = f", best {found:.4f} at epoch {s.get('best_epoch')}" if found is not None else ""
        return (f"Run('{self.path}': {self._files.model_recipe}, {len(self.history)} epochs, "
                f"val_acc {self.history[-1]['val_acc']:.4f}{best})")

    @property
    def config(self) -> TrainConfig:
        """The resolved settings the run trained with."""
        return TrainConfig.from_dict(self._files.config)

    @property
    def history(self) -> list[dict[str, float]]:
        """One dict per finished epoch: epoch, train_loss, train_acc, train_acc_clean, val_loss,
        val_acc, lr, seconds, train_seconds (metrics.csv)."""
        return self._files.history

    @property
    def summary(self) -> dict[str, Any]:
        """Final figures (summary.json); empty for an unfinished run."""
        return self._files.summary

    @property
    def classes(self) -> list[str]:
        return list(self._files.record.get("classes", []))

    @property
    def model(self) -> Classifier:
        """The best weights, ready for inference: raw 0..255 pixels in (NCHW), logits out."""
        return self.load_model("best")

    def load_model(self, weights: str = "best") -> Classifier:
        """`best` (by the monitored metric) or `final` weights, in eval mode on the CPU."""
        if weights not in self._models:
            self._models[weights], _ = checkpoint.load_model(self.path, self._model_factory(),
                                                             weights)
        return self._models[weights]

    def _model_factory(self) -> checkpoint.ModelArg:
        # A module instance is copied: loading the best weights must not overwrite the user's
        # object, which holds the final ones.
        arg = self._model_arg
        return copy.deepcopy(arg) if isinstance(arg, nn.Module) else arg

    def refresh(self) -> Run:
        """Read the run directory again (after it trained on)."""
        self._files = _read(self.path)
        self._models.clear()
        self._predictions.clear()
        return self

    def diagnosis(self) -> Diagnosis:
        """Overfitting, underfitting or good generalisation, with the reason (docs/diagnosis.md)."""
        return diagnose(self.history)

    # ------------------------------------------------------------------------------------------
    # Using the model

    def _split(self, data: PathLike | None, split: str) -> Any:
        """The images and labels of a split, without running the model on them."""
        _, part = reporting.evaluation_split(self._files.record, str(data) if data is not None
                                             else None, split, quiet=True)
        return part

    def predictions(self, data: PathLike | None = None, split: str = "val", tta: bool = False,
                    weights: str = "best", device: str = "auto") -> reporting.Predictions:
        """The model's logits on a split (cached: evaluate and the plots share one pass)."""
        key = (str(data) if data is not None else None, split, tta, weights, device)
        if key not in self._predictions:
            self._predictions[key] = reporting.predict_split(
                self._files, str(data) if data is not None else None, split, device, weights,
                tta, self._model_factory(), quiet=True)
        return self._predictions[key]

    def evaluate(self, data: PathLike | None = None, split: str = "val", tta: bool = False,
                 weights: str = "best", device: str = "auto") -> dict[str, Any]:
        """Accuracy, loss, per-class precision/recall/F1, calibration (ECE) on a split.

        split "val" is the run's own held-out images; "test" needs a source with a test split
        (the official archive has one); "train" the images it trained on.
        """
        return reporting.scores(self.predictions(data, split, tta, weights, device))

    def predict(self, images: Any, top_k: int = 5, weights: str = "best", tta: bool = False,
                device: str = "auto") -> list[dict[str, Any]]:
        """Top-k classes for image files, folders, PIL images or uint8 (N, 32, 32, 3) arrays."""
        array, names = as_images(images)
        torch_device = pick_device(device)
        model = self.load_model(weights).to(torch_device)
        return top_k_of(predict_logits(model, array, torch_device, tta=tta), self.classes, names, top_k)

    # ------------------------------------------------------------------------------------------
    # Figures (matplotlib Figures: Jupyter shows them inline; fig.savefig("x.png") saves one)

    def plot_curves(self) -> Figure:
        """Loss and accuracy per epoch, train against val, the gap shaded."""
        return reporting.curves_figure(self._files)

    def plot_confusion(self, split: str = "val", data: PathLike | None = None, tta: bool = False,
                       weights: str = "best") -> Figure:
        """Confusion matrix: counts, and each row as a share of its true class."""
        return reporting.confusion_figure(self.predictions(data, split, tta, weights))

    def plot_samples(self, split: str = "val", data: PathLike | None = None, count: int = 24,
                     mistakes: bool = False, weights: str = "best") -> Figure:
        """A grid of images with predicted and true class; `mistakes=True`: the most confident
        wrong ones."""
        p = self.predictions(data, split, False, weights)
        return reporting.mistakes_figure(p, count) if mistakes else reporting.samples_figure(p, count)

    def plot_calibration(self, split: str = "val", data: PathLike | None = None,
                         weights: str = "best") -> Figure:
        """Reliability diagram: confidence against accuracy."""
        return reporting.reliability_figure(self.predictions(data, split, False, weights))

    # ------------------------------------------------------------------------------------------
    # Understanding: what the network looks at, and how it holds up under corruptions

    def explain(self, images: Any = None, layer: str | None = None, count: int = 8,
                split: str = "val", data: PathLike | None = None, weights: str = "best",
                device: str = "auto", save: bool = True) -> dict[str, Figure]:
        """First-layer filters, feature maps by depth, and Grad-CAM heat maps for the most
        confident right and wrong predictions (on the split, or on your `images`: files,
        folders, PIL images or uint8 arrays). `layer` names the conv Grad-CAM reads (default:
        the last one). Figures are also written to RUN/explain/*.png unless save=False.
        """
        from cifarlab import explain as explaining

        torch_device = pick_device(device)
        model = self.load_model(weights)
        # RUN/explain/ is checked before the work (never a link to a folder of the user's)
        folder = rundir.output_folder(self.path, rundir.EXPLAIN) if save and self.path.is_dir() else None
        if images is None:
            part = self._split(data, split)  # explain predicts itself: no second pass here
            figures = explaining.explain(model, part.images, part.labels, self.classes,
                                         torch_device, layer=layer, count=count)
        else:
            array, names = as_images(images)
            figures = explaining.explain_images(model, array, names, self.classes, torch_device,
                                                layer=layer)
        if folder is not None:
            for name, figure in figures.items():
                fsio.write_bytes(folder / f"{name}.png", plots.to_png(figure))
        return figures

    def robustness(self, quick: bool = False, corruptions: Sequence[str] | None = None,
                   severities: Sequence[int] | None = None, images: int | None = None,
                   seed: int = 0, split: str = "val", data: PathLike | None = None,
                   weights: str = "best", device: str = "auto", quiet: bool = True,
                   save: bool = True) -> Any:
        """Accuracy under the 15 CIFAR-10-C corruptions at 5 severities (robustness.py), beside
        the clean accuracy; `quick` takes 1,000 images and severities 1, 3, 5. Written to
        RUN/robustness/ (CSV, JSON, heat map) unless save=False; returns a Robustness
        (`.mean_acc`, `.relative_drop`, `.table`, `.heatmap()`).
        """
        from cifarlab import robustness as robust

        preset = robust.PRESETS["quick" if quick else "full"]
        folder = (rundir.output_folder(self.path, rundir.ROBUSTNESS) if save and self.path.is_dir()
                  else None)  # checked before the work: never a link to a folder of the user's
        part = self._split(data, split)
        chosen, labels = robust.take(part.images, part.labels,
                                     images if images is not None else preset.images, seed=seed)
        result = robust.measure(self.load_model(weights), chosen, labels, pick_device(device),
                                corruptions=corruptions, severities=tuple(severities or preset.severities),
                                seed=seed, quiet=quiet)
        if folder is not None:
            result.write(folder, title=f"{self._files.label}: accuracy under corruption")
        return result

    # ------------------------------------------------------------------------------------------
    # Files

    def report(self, out: PathLike | None = None, data: PathLike | None = None, split: str = "val",
               tta: bool = False, weights: str = "best", device: str = "auto",
               quiet: bool = True) -> Path:
        """Write the HTML report (and its PNGs and JSON); returns the path of report.html."""
        written = reporting.write_report(self._files, out, str(data) if data is not None else None,
                                         split, device, quiet, weights, tta, self._model_factory())
        return written.out / "report.html"

    def export(self, format: str = "onnx", out: PathLike | None = None,
               weights: str = "best") -> Path:
        """Write the model as ONNX or TorchScript (normalisation and softmax inside)."""
        from cifarlab.export import export_model

        path, _ = export_model(self.path, format, out, weights, self._model_factory())
        return path

    def serve(self, host: str = "127.0.0.1", port: int = 8000, weights: str = "best",
              **limits: Any) -> None:
        """The web demo and JSON API for this model until Ctrl-C (docs/serving.md); `limits` are
        serve.Limits fields, e.g. max_upload_bytes, max_concurrency."""
        from cifarlab.serve import Limits, serve

        serve(self.path, host, port, Limits(**limits), weights, self._model_factory())

    def resume(self, epochs: int | None = None, **kwargs: Any) -> Run:
        """Train on: to the run's own end, or (constant schedules) to `epochs`. See `cl.resume`."""
        return resume(self.path, epochs=epochs, model=self._model_arg, **kwargs)


def _read(path: Path) -> rundir.RunFiles:
    """A run directory; or a lone model file (no history), for evaluate/predict/export."""
    if path.is_file():
        record = checkpoint.load(path, checkpoint.MODEL_FORMAT)
        return rundir.RunFiles(path, {"config": dict(record.get("config") or {}),
                                      "classes": list(record.get("classes") or [])}, [])
    return rundir.read(path)


# ----------------------------------------------------------------------------------------------
# Training


def make_config(recipe: str | None = None, config_file: PathLike | None = None,
                **settings: Any) -> TrainConfig:
    """The resolved settings for a run, checked: recipe < config file < keywords.

        >>> import cifarlab as cl
        >>> cl.make_config("robust", epochs=3).augment.flip
        True
    """
    if settings.get("data") is not None:
        settings["data"] = str(settings["data"])  # a Path is as good as a str
    return resolve(recipe, config_file, settings)


def train(recipe: str | None = None, *, model: Any = None, data: PathLike | None = None,
          out: PathLike | None = None, config_file: PathLike | None = None,
          callbacks: Sequence[Any] = (), quiet: bool = False, nproc: int = 1,
          started: float | None = None, **settings: Any) -> Run:
    """Train a recipe, or your own model, and return its Run.

        >>> import cifarlab as cl
        >>> run = cl.train("base", data="../shared/data/cifar10-train-jpeg.tgz", epochs=1,
        ...                subset=2000, out="runs/doc")              # doctest: +SKIP

    `model`: a registered name, "file.py:Class", an nn.Module (trained in place) or a factory
    (class or function; it gets num_classes if it takes it, and `model_kwargs`). Any other
    keyword is a setting (cl.make_config shows them all). `callbacks`: objects with
    `on_epoch_end(run, metrics)` (and optionally on_train_begin/on_train_end), or plain
    functions f(run, metrics); returning True stops training. `nproc=N` trains with N processes
    (DistributedDataParallel via torchrun's launcher; recipes and registered or file models only).
    Ctrl-C saves a checkpoint and raises `cifarlab.errors.Interrupted`; `cl.resume(path)` goes on.
    `started` (time.perf_counter()) is when a `budget`'s clock started, if before this call.
    """
    if data is not None:
        settings["data"] = str(data)
    if model is not None:
        settings["model"] = model if isinstance(model, str) else spec_of(model)
    cfg = resolve(recipe, config_file, settings)
    if cfg.tensorboard:
        from cifarlab.callbacks import TensorBoard

        callbacks = [*callbacks, TensorBoard()]
    if nproc != 1:
        return _train_processes(cfg, out, nproc, quiet, model)
    run_dir, _ = training.train(cfg, out, model=None if isinstance(model, str) else model,
                                callbacks=callbacks, quiet=quiet, started=started)
    return Run(run_dir, model if not isinstance(model, str) else None)


def _train_processes(cfg: TrainConfig, out: PathLike | None, nproc: int, quiet: bool,
                     model: Any) -> Run:
    """N processes on this machine: the same resolved config, handed to `cifarlab train` workers."""
    if model is not None and not isinstance(model, str):
        raise UserError("nproc > 1 starts new processes, which cannot receive a Python object: "
                        "register the model in a file and pass model='file.py:Class'")
    if cfg.budget is not None:
        raise UserError("--budget sizes a run for one process; leave out --nproc")
    # settled once, so that every worker names it
    run_dir = rundir.create(out, rundir.stem(cfg.recipe, cfg.model))
    (run_dir / rundir.MARKER).unlink()  # the workers' rank 0 claims it again
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(cfg.to_dict(), handle)
    try:
        argv = ["train", "--config", handle.name, "--out", str(run_dir)] + (["--quiet"] if quiet else [])
        if ":" in cfg.model:  # the user named it (a file never makes cifarlab import code)
            argv += ["--model", cfg.model]
        code = distributed.launch(nproc, argv)
    finally:
        os.unlink(handle.name)
    if code != 0:
        raise distributed.WorkersFailed(code)
    return Run(run_dir)


def trials(recipe: str | None = None, n: int = 3, *, out: PathLike | None = None,
           seed: int = 0, quiet: bool = False, **kwargs: Any) -> list[Run]:
    """`n` runs with seeds seed, seed+1, ... into OUT/seed-S; mean +- std into OUT/trials.json.

    A result is a distribution (airbench reports every figure over many seeds).
    """
    if n < 1:
        raise UserError("--trials must be at least 1")
    if distributed.from_env().enabled or kwargs.get("nproc", 1) != 1:
        raise UserError("--trials runs one process; leave out --nproc/torchrun")
    model = kwargs.get("model")
    name = make_config(recipe, kwargs.get("config_file"), model=model if model is None or isinstance(
        model, str) else spec_of(model)).recipe
    parent = rundir.create(out, name)
    runs = []
    for trial in range(n):
        if not quiet:
            print(f"trial {trial + 1}/{n}: seed {seed + trial}, {parent / f'seed-{seed + trial}'}",
                  flush=True)
        runs.append(train(recipe, out=parent / f"seed-{seed + trial}", seed=seed + trial,
                          quiet=quiet, **kwargs))
        kwargs.pop("started", None)  # a budget's clock starts once, for the first trial
    summaries = [run.summary for run in runs]
    table = comparing.mean_std_table(summaries)
    fsio.write_json(parent / "trials.json", {"summaries": summaries, "mean_std": table})
    for key, (mean, std) in table.items():  # the result, printed even when quiet
        print(f"{key}: {mean:.4f} +- {std:.4f} over {n} seeds")
    return runs


def resume(path: PathLike | None = None, *, epochs: int | None = None,
           data: PathLike | None = None, device: str | None = None, model: Any = None,
           callbacks: Sequence[Any] = (), quiet: bool = False, nproc: int = 1,
           **refused: Any) -> Run:
    """Continue an interrupted run (or extend a finished one with `epochs`, constant schedules).

    Only where the data lies, the device and the length may change; anything else is refused
    with a clear error (start a new run with `config_file=RUN/config.json` instead).

        >>> import cifarlab as cl
        >>> cl.resume("runs/nb", epochs=20)                           # doctest: +SKIP
    """
    run_dir = Path(path) if path is not None else rundir.latest()
    changes = {"epochs": epochs, "data": str(data) if data is not None else None,
               "device": device, **refused}
    if nproc != 1:
        argv = ["train", "--resume", str(run_dir)] + [
            f"--{key.replace('_', '-')}={value}" for key, value in changes.items() if value is not None]
        code = distributed.launch(nproc, argv + (["--quiet"] if quiet else []))
        if code != 0:
            raise distributed.WorkersFailed(code)
        return Run(run_dir)
    training.resume(run_dir, changes, model=model, callbacks=callbacks, quiet=quiet)
    return Run(run_dir, model)


def load(path: PathLike, *, model: Any = None) -> Run:
    """Open a run directory. `model`: your network again, for runs of your own model.

        >>> import cifarlab as cl
        >>> cl.load("runs/nb").summary["val_acc"]                    # doctest: +SKIP
    """
    return Run(path, model)


# ----------------------------------------------------------------------------------------------
# Looking around


class Comparison:
    """Several runs side by side: `rows` (dicts), `format("markdown")`, `chart()` (a Figure).

    In Jupyter a Comparison shows itself as a table; `print(comparison)` gives the text table.
    """

    def __init__(self, runs: list[rundir.RunFiles], skipped: list[str],
                 tta: list[float | None] | None = None):
        self.runs = runs
        self.skipped = skipped  # paths that are not runs
        self.rows = comparing.compare_rows(runs, tta)

    def format(self, fmt: str = "table") -> str:
        """"table" (aligned text), "markdown", "csv" or "json"."""
        if fmt not in comparing.FORMATS:
            raise UserError(f"unknown format '{fmt}' (choose from: {', '.join(comparing.FORMATS)})")
        return comparing.format_rows(self.rows, fmt)

    def chart(self) -> Figure:
        """The val accuracy per epoch of every run, one line each."""
        return comparing.chart(self.runs)

    def __str__(self) -> str:
        return self.format("table")

    def _repr_markdown_(self) -> str:
        return self.format("markdown")


def compare(paths: Sequence[PathLike] | PathLike, skip_non_runs: bool = False, tta: bool = False,
            device: str = "auto") -> Comparison:
    """Compare runs: accuracies of the last and the best epoch, TTA, the gap, the diagnosis, speed.

    Runs are named by the shortest end of their path that tells them apart. `tta=True` measures
    the val accuracy with test-time augmentation (final weights) for every run whose summary.json
    does not hold one already (the fast recipes record it while training).

        >>> import cifarlab as cl
        >>> print(cl.compare(["runs/base", "runs/robust"]))             # doctest: +SKIP
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    runs, skipped = [], []
    for path in paths:
        if skip_non_runs and not rundir.is_run(Path(path)):
            skipped.append(str(path))
            continue
        runs.append(rundir.read(path))
    if not runs:
        raise UserError("no runs to compare")
    measured = [_tta_of(run, device) if tta else None for run in runs]
    return Comparison(runs, skipped, measured)


def _tta_of(run: rundir.RunFiles, device: str) -> float | None:
    """The val accuracy with TTA of a run's final weights, unless its summary has it or it has no
    val images or no model.pt (unfinished); a model that cannot be loaded here is a note."""
    from cifarlab.errors import warn

    if "val_acc_tta" in run.summary or not math.isfinite(run.history[-1]["val_acc"]):
        return None
    if not (run.path / rundir.FINAL).is_file():
        warn(f"{run.path} has no {rundir.FINAL} yet: no TTA figure")
        return None
    try:
        return float(Run(run.path).evaluate(tta=True, weights="final", device=device)["accuracy"])
    except UserError as exc:
        warn(f"no TTA figure for {run.path}: {exc}")
        return None


def load_data(data: PathLike | None = None, quiet: bool = False) -> Dataset:
    """Read a data source (decoded once, then cached): its classes and its splits, each with
    `images` (N x 32 x 32 x 3 uint8, as stored) and `labels` (N integers, indices into `classes`).

    `data` as for `train`: an archive, a folder, or None for $CIFARLAB_DATA, else the official set.

        >>> import cifarlab as cl
        >>> data = cl.load_data("../shared/data/cifar10-train-jpeg.tgz")    # doctest: +SKIP
        >>> data.classes[:3], data.splits["train"].images.shape            # doctest: +SKIP
        (['airplane', 'automobile', 'bird'], (50000, 32, 32, 3))
    """
    from cifarlab.data import load_dataset

    return load_dataset(str(data) if data is not None else None, quiet=quiet)


def plot_data(data: Dataset | PathLike | None = None, per_class: int = 8, split: str = "train",
              seed: int = 0) -> Figure:
    """A grid of `per_class` random images of every class (one row each): look before you train.

        >>> import cifarlab as cl
        >>> cl.plot_data("../shared/data/cifar10-train-jpeg.tgz")          # doctest: +SKIP
    """
    from cifarlab import plots

    dataset = data if isinstance(data, Dataset) else load_data(data, quiet=True)
    if split not in dataset.splits:
        raise UserError(f"{dataset.source} has no '{split}' split (available: "
                        f"{', '.join(dataset.splits)})")
    part = dataset.splits[split]
    return plots.class_grid(part.images, part.labels, dataset.classes, per_class,
                            f"{per_class} random {split} images of each class "
                            f"({len(part):,} images in all)", seed)


def recipes() -> list[Recipe]:
    """The named recipes (name, description, settings).

        >>> import cifarlab as cl
        >>> [r.name for r in cl.recipes()][:3]
        ['base', 'robust', 'bn']
    """
    return list_recipes()


def models() -> list[str]:
    """Registered model names (add yours with `@cl.register_model("name")`)."""
    return list_models()


# The most classes `summary --classes` builds a head for: the base CNN's head then holds 205M
# weights (820 MB); a million classes would ask for 8 GB (and get it, on a large machine).
MAX_CLASSES = 100_000


def summary(target: Any = "base", *, num_classes: int | None = None, model: Any = None,
            **model_kwargs: Any) -> ModelSummary:
    """Each layer's output shape and parameters, totals and FLOPs per image, like Keras'
    model.summary(). `target`: a recipe, a registered model, "file.py:Class", a run directory,
    or an nn.Module.

        >>> import cifarlab as cl
        >>> cl.summary("bn").total_params > 0
        True
    """
    from cifarlab.config import RECIPES

    if num_classes is not None and not 1 <= num_classes <= MAX_CLASSES:
        raise UserError(f"--classes must be in 1..{MAX_CLASSES:,}, got {num_classes}")
    if isinstance(target, nn.Module):
        return summarize(target, type(target).__name__)
    text = str(target)
    if isinstance(target, os.PathLike) or Path(text).is_dir():
        run = Run(text, model)
        return summarize(run.load_model("final"), f"run {text} (model {run.config.model})")
    name, kwargs = text, dict(model_kwargs)
    if text in RECIPES:
        cfg = resolve(text)
        name, kwargs = cfg.model, {**cfg.model_kwargs, **kwargs}
    built = create_model(model if model is not None else name,
                         10 if num_classes is None else num_classes, kwargs=kwargs)
    title = f"recipe {text} (model {name})" if text in RECIPES else f"model {name}"
    return summarize(built, title)
