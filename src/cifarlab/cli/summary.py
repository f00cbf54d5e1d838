"""`cifarlab summary`: layers, output shapes, parameters and FLOPs of a model (Keras' summary())."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from cifarlab.cli import options
from cifarlab.config import parse_sets


def register(commands: Any) -> None:
    s = commands.add_parser(
        "summary", help="each layer's output shape and parameters, totals, FLOPs per image",
        description="Summarise a recipe's model, a registered model, a run's model or your own "
                    "(--model FILE.py:Class).")
    s.add_argument("target", nargs="?", default="base", metavar="RECIPE|MODEL|RUN",
                   help="a recipe, a registered model or a run directory (default: base)")
    options.model(s)
    s.add_argument("--set", action="append", default=[], metavar="model_kwargs.NAME=VALUE",
                   help="arguments for the model's factory (default: none)")
    s.add_argument("--classes", type=int, default=10, help="number of classes (default: 10)")
    options.json_flag(s)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import cifarlab as cl

    kwargs = {key.removeprefix("model_kwargs."): value for key, value in parse_sets(args.set).items()
              if key.startswith("model_kwargs.")}
    target = args.model if args.model and args.target == "base" else args.target
    result = cl.summary(target, num_classes=args.classes, model=args.model if target != args.model
                        else None, **kwargs)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(result)
    return 0
