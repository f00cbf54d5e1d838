"""`cifarlab data`: what a data source holds (kind, splits, images per class)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cifarlab.cli import options


def register(commands: Any) -> None:
    d = commands.add_parser("data", help="describe a data source: kind, splits, images per class")
    options.data(d, "$CIFARLAB_DATA, else the official set, downloaded once to ~/.cache/cifarlab")
    d.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of train held out for validation (default: 0.1)")
    options.json_flag(d)
    options.quiet(d)
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import cifarlab as cl

    dataset = cl.load_data(args.data, quiet=args.quiet or args.json)
    if args.json:
        print(json.dumps({"source": str(dataset.source), "kind": dataset.kind,
                          "classes": dataset.classes,
                          "splits": dataset.class_counts(args.val_fraction)}))
        return 0
    print(dataset.describe(args.val_fraction))
    return 0
