"""`cifarlab predict`: classify your own images with a run's model."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cifarlab.cli import options


def register(commands: Any) -> None:
    p = commands.add_parser("predict", help="classify your own images",
                            description="Top-k classes for image files or folders (any size or "
                                        "format PIL reads; resized to 32x32).")
    p.add_argument("run", metavar="RUN", help="run directory (or a model.pt file)")
    p.add_argument("images", metavar="IMAGE_OR_DIR", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default: 3)")
    options.tta(p)
    options.weights(p)
    options.model(p)
    options.device(p)
    options.json_flag(p, "print a JSON list: image, top classes with probabilities")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = options.open_run(args.run, args.model)
    results = target.predict(args.images, top_k=args.top_k, weights=args.weights, tta=args.tta,
                             device=args.device)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{args.run}: {target.weights_used(args.weights)}"
          + (", test-time augmentation" if args.tta else ""))
    for result in results:
        tops = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in result["top"])
        print(f"{result['image']}: {tops}")
    return 0
