"""`cifarlab robustness`: accuracy under the 15 CIFAR-10-C corruptions at 5 severities."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cifarlab.cli import options
from cifarlab.errors import UserError


def register(commands: Any) -> None:
    r = commands.add_parser(
        "robustness", help="accuracy under common corruptions (CIFAR-10-C): table, heat map, JSON",
        description="Measure a run's model on corrupted copies of a split (noise x 3, blur x 4, "
                    "weather x 4, digital x 4, at severities 1-5, made deterministically from "
                    "--seed) and write RUN/robustness/robustness.{csv,json,png}.")
    r.add_argument("run", metavar="RUN", help="run directory")
    r.add_argument("--quick", action="store_true",
                   help="a first look: 1,000 images, severities 1, 3, 5 (default: all images, 1-5)")
    r.add_argument("--corruptions", metavar="A,B,...",
                   help="only these corruptions (default: all 15; an unknown name lists them)")
    r.add_argument("--severities", metavar="1,3,5", help="only these severities (default: 1-5)")
    r.add_argument("--images", type=int, metavar="N",
                   help="a seeded random N of the split's images (default: all; --quick: 1,000)")
    r.add_argument("--seed", type=int, default=0, help="seed of the corruptions (default: 0)")
    options.data(r, "the data the run trained on")
    options.split(r)
    options.weights(r)
    options.model(r)
    options.device(r)
    options.json_flag(r)
    options.quiet(r)
    r.set_defaults(func=run)


def _numbers(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag} takes numbers separated by commas, e.g. 1,3,5; got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from cifarlab import rundir
    from cifarlab.text import plural

    target = options.open_run(args.run, args.model)
    corruptions = [c.strip() for c in args.corruptions.split(",")] if args.corruptions else None
    result = target.robustness(
        quick=args.quick, corruptions=corruptions, severities=_numbers(args.severities, "--severities"),
        images=args.images, seed=args.seed, split=args.split, data=args.data, weights=args.weights,
        device=args.device, quiet=args.quiet or args.json)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    print(f"accuracy under corruption of {target.weights_used(args.weights)}, on "
          f"{plural(result.n_images, 'image')} of the {args.split} split:")
    print(result.to_text())
    print(f"clean {result.clean_acc:.1%}, mean under corruption {result.mean_acc:.1%} "
          f"(relative drop {result.relative_drop:.1%}); wrote "
          f"{target.path / rundir.ROBUSTNESS}/robustness.{{csv,json,png}}")
    return 0
