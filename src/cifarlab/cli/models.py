"""`cifarlab models`: the registered networks."""

from __future__ import annotations

import argparse
import inspect
from typing import Any


def register(commands: Any) -> None:
    m = commands.add_parser("models", help="list the registered models",
                            description="Networks that --set model=NAME can train. Your own: "
                                        "--model FILE.py:Class.")
    m.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarlab.networks import MODELS

    width = max(len(name) for name in MODELS)
    for name in sorted(MODELS):
        doc = (inspect.getdoc(MODELS[name]) or "").splitlines()
        print(f"{name:<{width}}  {doc[0] if doc else ''}")
    return 0
