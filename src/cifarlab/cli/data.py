"""`cifarlab data`: what a data source holds (kind, splits, images per class)."""

from __future__ import annotations

import argparse
from typing import Any

from cifarlab.cli import options


def register(commands: Any) -> None:
    d = commands.add_parser("data", help="describe a data source: kind, splits, images per class")
    options.data(d, "$CIFARLAB_DATA, else the official set, downloaded once to ~/.cache/cifarlab")
    d.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of train held out for validation (default: 0.1)")
    options.quiet(d)
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarlab.data import describe, load_dataset, make_splits

    dataset = load_dataset(args.data, quiet=args.quiet)
    print(describe(dataset, make_splits(dataset, args.val_fraction)))
    return 0
