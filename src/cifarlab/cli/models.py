"""`cifarlab models`: the registered networks."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cifarlab.cli import options


def register(commands: Any) -> None:
    m = commands.add_parser("models", help="list the registered models",
                            description="Networks that --set model=NAME can train. Your own: "
                                        "--model FILE.py:Class.")
    options.json_flag(m, "print a JSON object: name -> first line of its docstring")
    m.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import cifarlab as cl

    docs = cl.models()
    if args.json:
        print(json.dumps(docs))
        return 0
    width = max(len(name) for name in docs)
    for name, doc in docs.items():
        print(f"{name:<{width}}  {doc}")
    return 0
