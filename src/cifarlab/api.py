"""The Python API: what `import cifarlab as cl` offers, and what every CLI command calls.

    import cifarlab as cl
    run = cl.train("base", data="../shared/data/cifar10-train-jpeg.tgz", epochs=15, out="runs/nb")
    run.history["val_acc"], run.results["best_val_acc"]   # Keras' names work: history["val_accuracy"]
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
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import nn

from cifarlab import checkpoint, clock, display, distributed, fsio, plots, rundir, worker
from cifarlab import comparison as comparing
from cifarlab import evaluate as evaluating
from cifarlab import report as reporting
from cifarlab import trainer as training
from cifarlab.arrays import is_memory, to_dataset
from cifarlab.config import Recipe, TrainConfig, list_recipes, resolve
from cifarlab.data import Dataset
from cifarlab.diagnose import Diagnosis
from cifarlab.errors import UserError
from cifarlab.evaluate import as_images, predict_logits
from cifarlab.evaluate import top_k as top_k_of
from cifarlab.history import History, evaluated
from cifarlab.modelsummary import ModelSummary, summarize
from cifarlab.networks import Classifier, create_model, describe_models, register_model, spec_of
from cifarlab.runtime import pick_device
from cifarlab.text import plural

__all__ = ["Comparison", "Run", "compare", "load", "load_data", "make_config", "models",
           "plot_data", "recipes", "register_model", "resume", "summary", "train", "train_seeds",
           "trials"]

PathLike = str | Path


class Run:
    """A run directory, read back: config, history, summary, the model, and what to do with it.

        >>> import cifarlab as cl
        >>> run = cl.load("runs/nb")                             # doctest: +SKIP
        >>> run.results["best_val_acc"], run.plot_curves()       # doctest: +SKIP

    `model` is the best weights (by the run's monitor) unless `weights="final"` is asked for.
    A run of your own network needs the network again: `cl.load(path, model=MyNet)`.
    """

    def __init__(self, path: PathLike, model: checkpoint.ModelArg = None,
                 dataset: Dataset | None = None):
        self.path = Path(path)
        self._files = _read(self.path)
        self._model_arg = model
        self._dataset = dataset  # the images in memory it trained on, if any (arrays.py)
        self._models: dict[str, Classifier] = {}
        self._records: dict[str, dict[str, Any]] = {}  # what each loaded model file said of itself
        self._predictions: dict[tuple[Any, ...], evaluating.Predictions] = {}

    def __repr__(self) -> str:
        s, what = self.results, self._files.model_recipe
        if self._files.run_name:
            what = f"{self._files.run_name!r}, {what}"
        if not self.history:
            return f"Run('{self.path}': a model file of {what})"
        epochs = plural(len(self.history), "epoch")
        scored = evaluated(self.history)  # epochs that were evaluated
        if not scored:  # --val-fraction 0
            return (f"Run('{self.path}': {what}, {epochs}, no validation, clean train_acc "
                    f"{self.history[-1]['train_acc_clean']:.4f})")
        found = s.get("best_val_acc")  # None: a summary without it (older, or partly written)
        best = f", best {found:.4f} at epoch {s.get('best_epoch')}" if found is not None else ""
        return f"Run('{self.path}': {what}, {epochs}, val_acc {scored[-1]['val_acc']:.4f}{best})"

    def _repr_html_(self) -> str:
        rows = [("folder", str(self.path)), ("model", self._files.model_recipe)]
        if self._files.run_name:
            rows.insert(0, ("name", self._files.run_name))
        if self.history:
            scored = evaluated(self.history)
            last, r = scored[-1] if scored else self.history[-1], self.results
            rows += [("epochs", str(len(self.history))),
                     ("val accuracy", display.number(last["val_acc"])),
                     ("clean train accuracy", display.number(last["train_acc_clean"]))]
            if r.get("best_val_acc") is not None:
                rows.append(("best val accuracy", f"{r['best_val_acc']:.4f} at epoch {r['best_epoch']}"))
            if r.get("val_acc_tta") is not None:
                rows.append(("val accuracy with TTA", f"{r['val_acc_tta']:.4f}"))
            rows.append(("diagnosis", self.diagnosis().verdict))
            if r.get("wall_seconds") is not None:
                rows.append(("time", f"{r['wall_seconds']:.0f} s"))
        return display.fields("Run", rows)

    @property
    def config(self) -> TrainConfig:
        """The resolved settings the run trained with."""
        return TrainConfig.from_dict(self._files.config)

    @property
    def history(self) -> History:
        """The finished epochs (metrics.csv): `history["val_acc"]` is a column (Keras' names work
        too: `history["val_accuracy"]`, `history.history["loss"]`), `history[-1]` the last row."""
        return self._files.history

    @property
    def results(self) -> dict[str, Any]:
        """The run's final figures (summary.json): val_acc, best_val_acc and its epoch, TTA,
        seconds ...; empty for an unfinished run."""
        return self._files.summary

    @property
    def summary(self) -> _Summary:
        """`run.summary()`: the model's layers, shapes, parameters and FLOPs, as Keras'
        model.summary(). (summary.json's figures are `run.results`; `run.summary["..."]` still
        reads them, with a DeprecationWarning.)"""
        return _Summary(self)

    @property
    def classes(self) -> list[str]:
        return list(self._files.info.get("classes", []))

    @property
    def model(self) -> Classifier:
        """The best weights, ready for inference: raw 0..255 pixels in (NCHW), logits out."""
        return self.load_model("best")

    def load_model(self, weights: str = "best") -> Classifier:
        """`best` (by the monitored metric) or `final` weights, in eval mode on the CPU."""
        if weights not in self._models:
            self._models[weights], self._records[weights] = checkpoint.load_model(
                self.path, self._model_factory(), weights)
        return self._models[weights]

    def weights_used(self, weights: str = "best") -> str:
        """Which weights `weights` loads, in words: "the best weights (epoch 11, best.pt)"
        (`best` is the final weights for a run without validation images)."""
        self.load_model(weights)
        return checkpoint.describe_weights(self._records[weights],
                                           rundir.weights_file(self.path, weights)
                                           if self.path.is_dir() else self.path)

    def _model_factory(self) -> checkpoint.ModelArg:
        # A module instance is copied: loading the best weights must not overwrite the user's
        # object, which holds the final ones.
        arg = self._model_arg
        return copy.deepcopy(arg) if isinstance(arg, nn.Module) else arg

    def refresh(self) -> Run:
        """Read the run directory again (after it trained on)."""
        self._files = _read(self.path)
        self._models.clear()
        self._records.clear()
        self._predictions.clear()
        return self

    def diagnosis(self) -> Diagnosis:
        """Overfitting, underfitting or good generalisation, with the reason (docs/diagnosis.md)."""
        return self._files.diagnosis()

    # ------------------------------------------------------------------------------------------
    # Using the model

    def _source(self, data: Any) -> str | Dataset | None:
        """What `data=` means here: a path; images in memory (the run's own training arrays are
        carved as the run carved them; others are judged as a whole); None: the run's own data."""
        if data is None:
            return self._dataset
        if not is_memory(data):
            return os.fspath(data)
        given = to_dataset(data, classes=self.classes or None)
        if str(given.source) == self._files.config.get("data"):
            return given
        return Dataset(given.source, given.kind, given.classes, {"test": given.splits["train"]})

    def _split(self, data: Any, split: str | None) -> Any:
        """The images and labels of a split, without running the model on them."""
        _, part = evaluating.evaluation_split(self._files.info, self._source(data), split, quiet=True)
        return part

    def predictions(self, data: Any = None, split: str | None = None, tta: bool = False,
                    weights: str = "best", device: str = "auto") -> evaluating.Predictions:
        """The model's logits on a split (cached: evaluate and the plots share one pass)."""
        source = self._source(data)
        key = (str(source.source) if isinstance(source, Dataset) else source, split, tta, weights,
               device)
        if key not in self._predictions:
            self._predictions[key] = evaluating.predict_split(
                self._files, source, split, device, weights, tta, self._model_factory(), quiet=True)
        return self._predictions[key]

    def evaluate(self, data: Any = None, split: str | None = None, tta: bool = False,
                 weights: str = "best", device: str = "auto") -> evaluating.Evaluation:
        """Accuracy, loss, per-class precision/recall/F1, calibration (ECE) on a split.

        split "val" (the default) is the run's own held-out images; "test" needs a source with a
        test split (the official archive has one); "train" the images it trained on. `data`:
        another source, or images in memory, as Keras' model.evaluate(x_test, y_test) takes them:
        `run.evaluate(data=(x_test, y_test))` judges all of them.
        """
        return evaluating.scores(self.predictions(data, split, tta, weights, device))

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

    def plot_confusion(self, split: str | None = None, data: Any = None, tta: bool = False,
                       weights: str = "best") -> Figure:
        """Confusion matrix: counts, and each row as a share of its true class."""
        return reporting.confusion_figure(self.predictions(data, split, tta, weights))

    def plot_samples(self, split: str | None = None, data: Any = None, count: int = 24,
                     mistakes: bool = False, weights: str = "best") -> Figure:
        """A grid of images with predicted and true class; `mistakes=True`: the most confident
        wrong ones."""
        p = self.predictions(data, split, False, weights)
        return reporting.mistakes_figure(p, count) if mistakes else reporting.samples_figure(p, count)

    def plot_calibration(self, split: str | None = None, data: Any = None,
                         weights: str = "best") -> Figure:
        """Reliability diagram: confidence against accuracy."""
        return reporting.reliability_figure(self.predictions(data, split, False, weights))

    # ------------------------------------------------------------------------------------------
    # Understanding: what the network looks at, and how it holds up under corruptions

    def explain(self, images: Any = None, layer: str | None = None, count: int = 8,
                split: str | None = None, data: Any = None, weights: str = "best",
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
                   seed: int = 0, split: str | None = None, data: Any = None,
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

    def report(self, out: PathLike | None = None, data: Any = None, split: str | None = None,
               tta: bool = False, weights: str = "best", device: str = "auto",
               quiet: bool = True) -> reporting.Report:
        """Write the HTML report (and its PNGs and JSON) into RUN/report (or `out`); returns the
        Report (`.path` is report.html, `.diagnosis`, `.evaluation`, `.files`)."""
        if not self.history:
            raise UserError(f"{self.path} is a model file: a report needs a run directory, with "
                            "its history")
        return reporting.write_report(self._files, out, self._source(data), split, device, quiet,
                                      weights, tta, self._model_factory())

    def export(self, format: str = "onnx", out: PathLike | None = None,
               weights: str = "best") -> Path:
        """Write the model as ONNX or TorchScript (normalisation and softmax inside)."""
        from cifarlab.export import export_model

        path, _ = export_model(self.path, format, out, weights, self._model_factory())
        return path

    def serve(self, host: str = "127.0.0.1", port: int = 8000, weights: str = "best",
              limits: Any = None, **limit_fields: Any) -> None:
        """The web demo and JSON API for this model until Ctrl-C (docs/serving.md); `limits` is a
        cifarlab.serve.Limits, or give its fields, e.g. max_upload_bytes=2**20, max_concurrency=8."""
        from cifarlab.serve import Limits, serve

        serve(self.path, host, port, limits or Limits(**limit_fields), weights,
              self._model_factory())

    def resume(self, epochs: int | None = None, **kwargs: Any) -> Run:
        """Train on: to the run's own end, or (constant, step or plateau schedules without a warm-up)
        to `epochs`. See `cl.resume`."""
        return resume(self.path, epochs=epochs, model=self._model_arg, **kwargs)


class _Summary(dict[str, Any]):
    """What `run.summary` is: called, the model table (Keras' model.summary()); read as a dict,
    summary.json, as before (the old spelling of `run.results`, kept one release)."""

    def __init__(self, run: Run):
        super().__init__(run.results)
        self._run = run

    def __call__(self, weights: str = "best") -> ModelSummary:
        model = self._run.load_model(weights)
        return summarize(model, f"{self._run._files.label} ({weights} weights)")

    def __getitem__(self, key: str) -> Any:
        warnings.warn("run.summary[...] is now run.results[...] (run.summary() is the model "
                      "table, as Keras' model.summary())", DeprecationWarning, stacklevel=2)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]  # warns, as [...] does
        except KeyError:
            return default


def _read(path: Path) -> rundir.RunFiles:
    """A run directory; or a lone model file (no history), for evaluate/predict/export."""
    if path.is_file():
        record = checkpoint.load(path, checkpoint.MODEL_FORMAT)
        return rundir.RunFiles(path, {"config": dict(record.get("config") or {}),
                                      "classes": list(record.get("classes") or [])}, History())
    if not path.exists():
        raise UserError(f"run or model not found: {path} (a run directory or a model file)")
    return rundir.read(path)


# ----------------------------------------------------------------------------------------------
# Training


def make_config(recipe: str | None = None, config_file: PathLike | None = None,
                **settings: Any) -> TrainConfig:
    """The resolved settings for a run, checked: recipe < config file < keywords.

        >>> import cifarlab as cl
        >>> cl.make_config("robust", epochs=3).augment.flip
        True
        >>> cl.make_config("fast", budget="10m", epochs=5).max_epochs   # with a budget, a cap
        5
    """
    return resolve(recipe, config_file, settings)


def _settings(model: Any, data: PathLike | None, settings: dict[str, Any]) -> dict[str, Any]:
    """`model=` and `data=` as the settings they stand for (config.py coerces paths)."""
    if data is not None:
        settings["data"] = data
    if model is not None:
        settings["model"] = model if isinstance(model, str) else spec_of(model)
    return settings


def _with_loggers(cfg: TrainConfig | None, callbacks: Sequence[Any], live_plot: bool,
                  mlflow: str | bool | None = None) -> list[Any]:
    """The user's callbacks, plus the loggers the settings switch on (TensorBoard), MLflow if
    asked for, and live curves."""
    from cifarlab.callbacks import LiveCurves, loggers

    return [*callbacks, *loggers(cfg, mlflow), *([LiveCurves()] if live_plot else [])]


def train(recipe: str | None = None, *, model: Any = None, data: Any = None,
          val_data: Any = None, classes: Sequence[str] | None = None,
          out: PathLike | None = None, config_file: PathLike | None = None,
          callbacks: Sequence[Any] = (), quiet: bool = False, live_plot: bool | None = None,
          nproc: int = 1, nnodes: int = 1, rdzv_endpoint: str | None = None,
          mlflow: str | bool | None = None, **settings: Any) -> Run:
    """Train a recipe, or your own model, and return its Run.

        >>> import cifarlab as cl
        >>> run = cl.train("base", data="../shared/data/cifar10-train-jpeg.tgz", epochs=1,
        ...                subset=2000, out="runs/doc")              # doctest: +SKIP
        >>> (x, y), _ = keras.datasets.cifar10.load_data()          # doctest: +SKIP
        >>> run = cl.train("base", data=(x, y), val_fraction=0.1)          # doctest: +SKIP

    `data`: a source (an archive, a folder; None: $CIFARLAB_DATA, else the official set), or
    images in memory: `(x, y)` arrays or tensors (uint8 0..255 or float 0..1, N x 32 x 32 x 3 or
    N x 3 x 32 x 32; labels N or N x 1 or one-hot), a `cl.load_data` Dataset, or a torch Dataset
    of (image, label). `val_data`: validation images the same way (Keras' validation_data), else
    `val_fraction` of `data` is held out. `classes`: names for the labels 0, 1, ... of arrays.
    `model`: a registered name, "file.py:Class", an nn.Module (trained in place) or a factory
    (class or function; it gets num_classes if it takes it, and `model_kwargs`). Any other
    keyword is a setting (cl.make_config shows them all), e.g. `budget="10m"` (then `epochs`,
    if given, is the most it may choose). `callbacks`: cl.Callback objects or functions
    f(trainer, metrics) (callbacks.py). `live_plot`: redraw the curves after every epoch (default:
    in a Jupyter notebook, unless quiet). `nproc=N` trains with N processes
    (DistributedDataParallel via torchrun's launcher; recipes and registered or file models only);
    `nnodes=N, rdzv_endpoint="HOST:PORT"`: this machine is one of N that make the same call, `out`
    a folder they all see (docs/distributed.md). `mlflow`: a tracking URI, or True for
    $MLFLOW_TRACKING_URI: log the run to MLflow (callbacks.MLflow; README).
    Ctrl-C saves a checkpoint and raises `cl.Interrupted`; `cl.resume(path)` goes on.
    """
    dataset = None
    if isinstance(data, Dataset) and data.origin is not None and val_data is None and not classes:
        settings = {**data.origin, **settings}  # read from a file: train from that file
        data = None
    elif is_memory(data) or val_data is not None or classes:
        if data is None:
            raise UserError("val_data and classes come with data=(x, y): the images to train on")
        dataset = to_dataset(data, list(classes) if classes else None, val_data)
        data = str(dataset.source)  # "memory:<fingerprint>": the run records which images
    cfg = resolve(recipe, config_file, _settings(model, data, settings))
    live = live_plot if live_plot is not None else display.in_notebook() and not quiet
    if nproc != 1 or nnodes != 1:
        if dataset is not None:
            raise UserError("nproc > 1 starts new processes, which cannot receive images in "
                            "memory: save them as an image folder and pass its path")
        return _train_processes(cfg, out, nproc, quiet, model, callbacks, mlflow, nnodes,
                                rdzv_endpoint)
    callbacks = _with_loggers(cfg, callbacks, live, mlflow)
    run_dir, _ = training.train(cfg, out, model=None if isinstance(model, str) else model,
                                callbacks=callbacks, quiet=quiet, started=clock.take_start(),
                                dataset=dataset)
    return Run(run_dir, model if not isinstance(model, str) else None, dataset)


def _train_processes(cfg: TrainConfig, out: PathLike | None, nproc: int, quiet: bool,
                     model: Any, callbacks: Sequence[Any], mlflow: str | bool | None = None,
                     nnodes: int = 1, endpoint: str | None = None) -> Run:
    """N processes on this machine (and on each of `nnodes` machines), each handed the resolved
    config through one job file; they make their loggers (TensorBoard, MLflow) themselves."""
    if model is not None and not isinstance(model, str):
        raise UserError("nproc > 1 starts new processes, which cannot receive a Python object: "
                        "register the model in a file and pass model='file.py:Class'")
    if callbacks:
        raise UserError("nproc > 1 starts new processes, which cannot receive callbacks")
    if cfg.budget is not None:
        raise UserError("a budget sizes a run for one process; leave out nproc")
    _check_mlflow(mlflow)
    job: dict[str, Any] = {"action": "train", "config": cfg.to_dict(), "quiet": quiet,
                           **({"mlflow": mlflow} if mlflow else {})}
    if nnodes > 1:  # every machine names the same folder; global rank 0 claims it
        if out is None:
            raise UserError("--nnodes > 1 needs --out DIR: a folder that every machine sees "
                            "(rank 0 writes it), the same on every one")
        worker.run_processes(nproc, {**job, "run_dir": os.fspath(out), "claimed": False},
                             nnodes=nnodes, endpoint=endpoint)
        return Run(out)
    existed = out is not None and Path(out).is_dir()
    run_dir = rundir.create(out, rundir.stem(cfg.recipe, cfg.model, cfg.name))  # claimed, once
    try:
        worker.run_processes(nproc, {**job, "run_dir": str(run_dir)})
    except BaseException:
        rundir.discard_if_empty(run_dir, remove_folder=not existed)
        raise
    return Run(run_dir)


def _check_mlflow(mlflow: str | bool | None) -> None:
    """Before processes start: a missing extra or an unreachable store is one line now."""
    if mlflow:
        from cifarlab import tracking

        tracking.experiment_id(tracking.mlflow_client(mlflow if isinstance(mlflow, str) else None))


def train_seeds(recipe: str | None = None, n: int = 3, *, out: PathLike | None = None,
                seed: int = 0, quiet: bool = False, **kwargs: Any) -> list[Run]:
    """`n` runs with seeds seed, seed+1, ... into OUT/seed-S; mean +- std into OUT/seeds.json.

    A result is a distribution (airbench reports every figure over many seeds).

        >>> import cifarlab as cl
        >>> runs = cl.train_seeds("quick", n=3)             # doctest: +SKIP
    """
    if n < 1:
        raise UserError("the number of seeds must be at least 1")
    if distributed.from_env().enabled or kwargs.get("nproc", 1) != 1:
        raise UserError("training over seeds runs one process; leave out nproc/torchrun")
    model = kwargs.get("model")  # named here too: a file names a model only with the user
    named = {} if model is None else {"model": model if isinstance(model, str) else spec_of(model)}
    name = make_config(recipe, kwargs.get("config_file"), **named).recipe
    parent = rundir.create(out, name)
    runs = []
    for index in range(n):
        if not quiet:
            print(f"seed {seed + index} ({index + 1} of {n}): {parent / f'seed-{seed + index}'}",
                  flush=True)
        runs.append(train(recipe, out=parent / f"seed-{seed + index}", seed=seed + index,
                          quiet=quiet, **kwargs))
    summaries = [run.results for run in runs]
    table = comparing.mean_std_table(summaries)
    fsio.write_json(parent / SEEDS_FILE, {"summaries": summaries, "mean_std": table})
    for key, (mean, std) in table.items():  # the result, printed even when quiet
        print(f"{key}: {mean:.4f} +- {std:.4f} over {plural(n, 'seed')}")
    return runs


SEEDS_FILE = "seeds.json"


def trials(recipe: str | None = None, n: int = 3, **kwargs: Any) -> list[Run]:
    """The old name of `train_seeds` (a "trial" is a search's; this is seeds)."""
    warnings.warn("cl.trials is now cl.train_seeds (trials are the search's)", DeprecationWarning,
                  stacklevel=2)
    return train_seeds(recipe, n, **kwargs)


def resume(path: PathLike | None = None, *, epochs: int | None = None,
           data: Any = None, val_data: Any = None, device: str | None = None, model: Any = None,
           callbacks: Sequence[Any] = (), quiet: bool = False, nproc: int = 1, nnodes: int = 1,
           rdzv_endpoint: str | None = None, mlflow: str | bool | None = None,
           **refused: Any) -> Run:
    """Continue an interrupted run (or extend a finished one with `epochs`: constant, step or plateau
    schedules without a warm-up).

    Only where the data lies, the device and the length may change; anything else is refused
    with a clear error (start a new run with `config_file=RUN/config.json` instead). A run
    trained on images in memory needs them again: `data=(x, y)` (and `val_data=` if it had one).

        >>> import cifarlab as cl
        >>> cl.resume("runs/nb", epochs=20)                           # doctest: +SKIP
    """
    run_dir = Path(path) if path is not None else rundir.latest()
    dataset = None
    if is_memory(data):  # the images it trained on, again: checked by their fingerprint
        classes = (rundir.read_json(run_dir / rundir.CONFIG) or {}).get("classes")
        dataset = to_dataset(data, classes if isinstance(classes, list) else None, val_data)
    changes = {"epochs": epochs, "data": os.fspath(data) if data is not None and dataset is None
               else None, "device": device, **refused}
    if nproc != 1 or nnodes != 1:
        if model is not None and not isinstance(model, str):
            raise UserError("nproc > 1 starts new processes, which cannot receive a Python "
                            "object: pass model='file.py:Class'")
        if dataset is not None:
            raise UserError("nproc > 1 cannot receive images in memory")
        _check_mlflow(mlflow)
        worker.run_processes(nproc, {"action": "resume", "run_dir": str(run_dir), "quiet": quiet,
                                     "changes": changes, "model": model,
                                     **({"mlflow": mlflow} if mlflow else {})},
                             nnodes=nnodes, endpoint=rdzv_endpoint)
        return Run(run_dir)
    training.resume(run_dir, changes, model=model, quiet=quiet, dataset=dataset,
                    callbacks=_with_loggers(None, callbacks, False, mlflow))
    return Run(run_dir, model, dataset)


def load(path: PathLike, *, model: Any = None) -> Run:
    """Open a run directory. `model`: your network again, for runs of your own model.

        >>> import cifarlab as cl
        >>> cl.load("runs/nb").results["val_acc"]                    # doctest: +SKIP
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

    def format(self, fmt: str = "table", width: int | None = None, wide: bool = False) -> str:
        """"table" (aligned text), "markdown", "csv" or "json".

        The text table fits `width` characters (default: the terminal's, else 80) by splitting
        its headers and leaving out the less needed columns, which a last line names;
        `wide=True` shows every column however wide.
        """
        if fmt not in comparing.FORMATS:
            raise UserError(f"unknown format '{fmt}' (choose from: {', '.join(comparing.FORMATS)})")
        limit = None if wide else width or shutil.get_terminal_size().columns
        return comparing.format_rows(self.rows, fmt, limit, wide_hint="wide=True")

    def chart(self) -> Figure:
        """The val accuracy per epoch of every run, one line each."""
        return comparing.chart(self.runs)

    def __str__(self) -> str:
        return self.format("table")

    __repr__ = __str__  # the table is what a Comparison is

    def _repr_markdown_(self) -> str:
        return self.format("markdown")


def compare(runs: Sequence[Run | PathLike] | Run | PathLike, skip_non_runs: bool = False,
            tta: bool = False, device: str = "auto") -> Comparison:
    """Compare runs: accuracies of the last and the best epoch, TTA, the gap, the diagnosis, speed.

    `runs`: Run objects (what cl.train returns), paths, or a mix. Runs are named by their `name`
    if they have one, else by the shortest end of their path that tells them apart. `tta=True`
    measures the val accuracy with test-time augmentation (final weights) for every run whose
    summary.json does not hold one already (the fast recipes record it while training).

        >>> import cifarlab as cl
        >>> print(cl.compare([run_a, "runs/robust"]))                  # doctest: +SKIP
    """
    if isinstance(runs, Run | str | os.PathLike):
        runs = [runs]
    files, skipped = [], []
    for item in runs:
        if isinstance(item, Run):
            if not item.refresh().history:
                raise UserError(f"{item.path} is a model file: compare needs runs, with histories")
            files.append(item._files)
            continue
        if not isinstance(item, str | os.PathLike):
            raise UserError(f"cl.compare takes runs (cl.Run, or a run folder's path), not "
                            f"{type(item).__name__}")
        if skip_non_runs and not rundir.is_run(Path(item)):
            skipped.append(os.fspath(item))
            continue
        files.append(rundir.read(item))
    if not files:
        raise UserError("no runs to compare")
    measured = [_tta_of(run, device) if tta else None for run in files]
    return Comparison(files, skipped, measured)


def _tta_of(run: rundir.RunFiles, device: str) -> float | None:
    """The val accuracy with TTA of a run's final weights, unless its summary has it or it has no
    val images or no model.pt (unfinished); a model that cannot be loaded here is a note."""
    from cifarlab.errors import warn

    if "val_acc_tta" in run.summary or not evaluated(run.history):
        return None
    if not (run.path / rundir.FINAL).is_file():
        warn(f"{run.path} has no {rundir.FINAL} yet: no TTA figure")
        return None
    try:
        return float(Run(run.path).evaluate(tta=True, weights="final", device=device)["accuracy"])
    except UserError as exc:
        warn(f"no TTA figure for {run.path}: {exc}")
        return None


def load_data(data: PathLike | None = None, val_fraction: float = 0.1, split_seed: int = 0,
              quiet: bool = False, label_mode: str = "fine") -> Dataset:
    """Read a data source (decoded once, then cached) as a run sees it: its classes and its
    splits "train", "val" (the last `val_fraction` of each class of train after a shuffle by
    `split_seed`, as a run with those settings holds out; none with 0, or the source's own val/)
    and "test" where the source has one. Each split has `images` (N x 32 x 32 x 3 uint8, as
    stored) and `labels` (N integers, indices into `classes`).

    `data` as for `train`: an archive, a folder, "cifar10" or "cifar100" (the official sets,
    downloaded once), or None for $CIFARLAB_DATA, else CIFAR-10. `label_mode` is CIFAR-100's
    label set, as in Keras' cifar100.load_data: "fine" (100 classes) or "coarse" (20).
    `cl.train(data=dataset)` trains from the same source with the same split and labels.

        >>> import cifarlab as cl
        >>> data = cl.load_data("../shared/data/cifar10-train-jpeg.tgz")    # doctest: +SKIP
        >>> data.classes[:3], data.splits["val"].images.shape              # doctest: +SKIP
        (['airplane', 'automobile', 'bird'], (5000, 32, 32, 3))
        >>> len(cl.load_data("cifar100", label_mode="coarse").classes)     # doctest: +SKIP
        20
    """
    from cifarlab.data import load_dataset, make_splits

    dataset = load_dataset(os.fspath(data) if data is not None else None, quiet=quiet,
                           label_mode=label_mode)
    splits = make_splits(dataset, val_fraction, split_seed)
    origin = {"data": str(dataset.source), "val_fraction": val_fraction, "split_seed": split_seed,
              "label_mode": label_mode}
    return Dataset(dataset.source, dataset.kind, dataset.classes, splits, dataset.cache_file, origin,
                   label_mode)


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


def models() -> dict[str, str]:
    """The registered models: name -> the first line of its docstring (add yours with
    `@cl.register_model("name")`).

        >>> import cifarlab as cl
        >>> "base" in cl.models()
        True
    """
    return describe_models()


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
