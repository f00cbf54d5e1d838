"""Options that several commands share, spelled and explained the same way everywhere."""

from __future__ import annotations

import argparse
from typing import Any

DATA_HELP = ("cifar-10-python.tar.gz, a cifar-10-batches-py folder, or an image folder "
             "(ROOT/{train,test}/<class>/*.png) or .tgz/.zip of one")


def data(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--data", metavar="SRC", help=f"{DATA_HELP} (default: {default})")


def model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="SPEC",
                        help="your own network: FILE.py:Class or package.module:Name (needed again "
                             "for runs of your own model: checkpoints never import code)")


def weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", choices=["best", "final"], default="best",
                        help="best.pt (the best epoch by the run's monitor) or model.pt (the last "
                             "epoch) (default: best)")


def device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to run (default: auto = cuda if available)")


def quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def tta(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                        help="test-time augmentation: average 6 flipped/shifted views (6x slower; "
                             "default: off)")


SPLIT_HELP = ("split to evaluate: val (the run's own held-out images), test (sources that have "
              "one, e.g. the official archive), or train (default: val)")


def split(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=["val", "test", "train"], default="val", help=SPLIT_HELP)


def open_run(path: str, model_spec: str | None) -> Any:
    """A run directory or model file, as the API's Run."""
    from cifarlab.api import load

    return load(path, model=model_spec)
