"""`cifarlab lr-find`: the learning-rate range test; prints the suggested lr, writes only with --out."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cifarlab.cli import options
from cifarlab.config import RECIPES, parse_sets


def register(commands: Any) -> None:
    f = commands.add_parser(
        "lr-find", help="learning-rate range test: loss against an exponentially growing lr",
        description="Train for --steps steps while the lr grows from --start to --end, stop when "
                    "the smoothed loss passes 4x its best, and suggest an lr: the minimum of the "
                    "smoothed loss / 10 (the steepest descent is reported too). Uses the "
                    "recipe's (or --config's) optimizer, batch size and augmentation. Writes "
                    "nothing unless --out DIR is given (lr_find.png, .csv, .json).")
    f.add_argument("--recipe", help=f"one of: {', '.join(RECIPES)} (default: the --config file's, else base)")
    options.data(f, "$CIFARLAB_DATA, else the official set, downloaded once to ~/.cache/cifarlab")
    options.model(f)
    f.add_argument("--config", metavar="FILE", help="settings from a YAML or JSON file (default: none)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. --set optimizer=sgd --set batch_size=128 (repeatable) "
                        "(default: the recipe's)")
    f.add_argument("--start", type=float, default=1e-7, help="first lr (default: 1e-7)")
    f.add_argument("--end", type=float, default=10.0, help="last lr (default: 10)")
    f.add_argument("--steps", type=int, default=100, help="training steps (default: 100)")
    f.add_argument("--out", metavar="DIR",
                   help="also write lr_find.png, lr_find.csv and lr_find.json here (default: "
                        "nothing is written)")
    options.quiet(f)
    options.json_flag(f)
    f.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import cifarlab as cl

    changes = parse_sets(args.set)
    model = args.model if args.model is not None else changes.pop("model", None)
    found = cl.lr_find(args.recipe, model=model, data=args.data, config_file=args.config,
                       start=args.start, end=args.end, steps=args.steps, out=args.out,
                       quiet=args.quiet or args.json, **changes)
    if args.json:
        print(json.dumps(found.to_dict(), indent=2))
        return 0
    print(f"suggested lr {found.suggestion:.2g}: the minimum of the smoothed loss ({found.minimum:.2g}) "
          f"/ 10; steepest descent at {found.steepest:.2g} ({len(found.lrs)} steps, {found.stopped})")
    recipe = found.config.get("recipe")
    print(f"try: cifarlab train --recipe {recipe} --lr {found.suggestion:.2g}"
          + (f" --model {found.config.get('model')}" if model else ""))
    if args.out:
        print(f"wrote {args.out}/lr_find.png, lr_find.csv, lr_find.json")
    return 0
