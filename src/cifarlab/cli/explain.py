"""`cifarlab explain`: what the network learned and where it looks (explain.py does the work)."""

from __future__ import annotations

import argparse
from typing import Any

from cifarlab.cli import options


def register(commands: Any) -> None:
    e = commands.add_parser(
        "explain", help="first-layer filters, feature maps and Grad-CAM heat maps of a run's model",
        description="Write RUN/explain/*.png: the first layer's filters, the strongest feature "
                    "maps at a few depths, and Grad-CAM heat maps (where the model looked) for its "
                    "most confident right and wrong predictions on a split, or for your IMAGES.")
    e.add_argument("run", metavar="RUN", help="run directory")
    e.add_argument("images", metavar="IMAGE_OR_DIR", nargs="*",
                   help="your own images (default: the split's images)")
    e.add_argument("--layer", metavar="NAME",
                   help="the conv layer Grad-CAM reads, e.g. body.6 (default: the last conv; an "
                        "unknown name lists them)")
    e.add_argument("--count", type=int, default=8,
                   help="heat maps per figure, right and wrong each, at most 32 (default: 8); "
                        "of your own IMAGES the first 32 are drawn")
    options.data(e, "the data the run trained on")
    options.split(e)
    options.weights(e)
    options.model(e)
    options.device(e)
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarlab import rundir

    target = options.open_run(args.run, args.model)
    figures = target.explain(images=args.images or None, layer=args.layer, count=args.count,
                             split=args.split, data=args.data, weights=args.weights,
                             device=args.device)
    folder = target.path / rundir.EXPLAIN
    print(f"wrote {', '.join(f'{name}.png' for name in figures)} in {folder}")
    return 0
