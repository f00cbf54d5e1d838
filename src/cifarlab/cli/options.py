"""Options that several commands share, spelled and explained the same way everywhere.

Every help text ends with its default. A flag that takes no value is off unless given.
"""

from __future__ import annotations

import argparse
from typing import Any

DATA_HELP = ("cifar-10-python.tar.gz or cifar-100-python.tar.gz or their extracted folder, an "
             "image folder (ROOT/{train,test}/<class>/*.png) or .tgz/.zip of one, or the name "
             "cifar10 or cifar100 where no such path exists: the official set, downloaded once")


def data(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--data", metavar="SRC", help=f"{DATA_HELP} (default: {default})")


def label_mode(parser: argparse.ArgumentParser, default: str | None = "fine") -> None:
    """`default=None` (train): keep what the --config file says, which is fine."""
    parser.add_argument("--label-mode", choices=["fine", "coarse"], default=default,
                        help="CIFAR-100's labels: fine (its 100 classes) or coarse (its 20 "
                             "superclasses), as Keras' cifar100.load_data(label_mode=...) "
                             "(default: fine)")


def model(parser: argparse.ArgumentParser,
          default: str = "the model the run names, if it is registered") -> None:
    parser.add_argument("--model", metavar="SPEC",
                        help="your own network: FILE.py:Class or package.module:Name (needed again "
                             f"for runs of your own model: checkpoints never import code) (default: "
                             f"{default})")


def weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", choices=["best", "final"], default="best",
                        help="best.pt (the best epoch by the run's monitor; runs without validation "
                             "images have only the final weights) or model.pt (the last epoch) "
                             "(default: best)")


def device(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """`default=None` (train): keep what the recipe or config file says, which is auto."""
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=default,
                        help="where to run: auto = cuda if available, else cpu (default: auto)")


def quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="no progress output; results and errors still print (default: off)")


def json_flag(parser: argparse.ArgumentParser, what: str = "print one JSON object instead of text") -> None:
    parser.add_argument("--json", action="store_true", help=f"{what} (default: off)")


def tta(parser: argparse.ArgumentParser,
        what: str = "test-time augmentation: average 6 flipped/shifted views (6x slower)") -> None:
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                        help=f"{what} (default: off)")


SPLIT_HELP = ("images to judge the model on: val (the run's own held-out images), train (the images "
              "it trained on), or test (the source's test split; used only when asked for, and "
              "--data may name a source that holds only test/) (default: val)")


def split(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=["val", "test", "train"], default="val", help=SPLIT_HELP)


def open_run(path: str, model_spec: str | None) -> Any:
    """A run directory or model file, as the API's Run."""
    from cifarlab.api import load

    return load(path, model=model_spec)


def mlflow(parser: argparse.ArgumentParser, what: str) -> None:
    """`--mlflow URI`, or `--mlflow` alone for the store MLflow users set in $MLFLOW_TRACKING_URI."""
    parser.add_argument("--mlflow", nargs="?", const=True, default=None, metavar="URI",
                        help=f"log to MLflow: {what}; URI is the tracking store, e.g. "
                             "sqlite:///mlflow.db or http://host:5000 (alone: $MLFLOW_TRACKING_URI, "
                             "else ./mlflow.db); the experiment: $MLFLOW_EXPERIMENT_NAME, else "
                             "cifarlab (needs: pip install 'cifarlab[mlflow]') (default: off)")
