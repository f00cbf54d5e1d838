"""`cifarlab evaluate`: accuracy, loss and per-class accuracy of a run's model on one split."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cifarlab.cli import options
from cifarlab.text import plural


def register(commands: Any) -> None:
    e = commands.add_parser("evaluate", help="accuracy, loss and per-class scores of a model",
                            description="Evaluate a run's model (best weights by default) on one "
                                        "split of its data or of --data.")
    e.add_argument("run", metavar="RUN", help="run directory (or a model.pt file)")
    options.data(e, "the data the run trained on")
    options.split(e)
    options.tta(e)
    options.weights(e)
    options.model(e)
    options.device(e)
    options.json_flag(e)
    options.quiet(e)
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = options.open_run(args.run, args.model).evaluate(
        data=args.data, split=args.split, tta=args.tta, weights=args.weights, device=args.device)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("confusion", "calibration")}))
        return 0
    epoch = f", epoch {result['epoch']}" if result.get("epoch") else ""
    print(f"{result['split']}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
          f"({plural(result['images'], 'image')}, {result['weights']} weights{epoch}"
          f"{', test-time augmentation' if args.tta else ''})")
    classes = result["per_class"]
    rows: list[tuple[str, dict[str, float]] | None] = list(classes.items())
    if len(classes) > MANY_CLASSES:  # CIFAR-100: the ends of the list, by F1
        ranked = sorted(classes.items(), key=lambda item: item[1]["f1"])
        rows = [*ranked[:WEAKEST], None, *ranked[-STRONGEST:]]
        print(f"  the {WEAKEST} weakest and {STRONGEST} strongest of {len(classes)} classes by F1 "
              "(all of them: --json, or cifarlab report)")
    width = max(len("class"), *(len(c) for c in classes))
    print(f"  {'class':<{width}}  precision  recall     F1")
    for row in rows:
        if row is None:
            print(f"  {'...':<{width}}")
            continue
        name, s = row
        print(f"  {name:<{width}}  {s['precision']:>9.4f}  {s['recall']:>6.4f}  {s['f1']:.4f}")
    return 0


MANY_CLASSES = 20  # above this, a line per class would scroll the accuracy off the screen
WEAKEST, STRONGEST = 10, 5
