"""Hyperparameter search on Optuna: an optional wing (`pip install 'cifarlab[search]'`).

    study.py    runs the trials (`cl.search`, `cifarlab search`)
    space.py    the search-space format, read and checked without torch or optuna
    storage.py  the search folder's layout and the study's database
    results.py  reading a study back: tables, figures, the page (`Search`)

The core never imports this package; the package facade (`cl.search`) and the CLI do. Its names
load on first use, so `cifarlab search --help` (which reads space.py) imports neither torch nor
optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Search", "search"]
_WHERE = {"Search": "cifarlab.hpsearch.results", "search": "cifarlab.hpsearch.study"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'cifarlab.hpsearch' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
