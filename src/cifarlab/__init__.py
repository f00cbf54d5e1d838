"""cifarlab: train, diagnose and compare small image classifiers on CIFAR-10 and image folders.

    import cifarlab as cl
    run = cl.train("base", data="../shared/data/cifar10-train-jpeg.tgz", epochs=15)
    run.plot_curves()

`import cifarlab` is cheap: torch and matplotlib load on first use of the API (api.py).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_API = {"train", "train_seeds", "resume", "load", "compare", "make_config", "recipes", "models",
        "register_model", "summary", "load_data", "plot_data", "Run", "Comparison"}
# The wings (hpsearch/, serve/) and the lr finder are re-exported here, not by api.py: api.py
# imports none of them, so nothing imports back into it (no import circles).
_ELSEWHERE = {"search": "cifarlab.hpsearch", "Search": "cifarlab.hpsearch",
              "lr_find": "cifarlab.lrfind", "LRFind": "cifarlab.lrfind",
              "Callback": "cifarlab.callbacks",
              "TrainConfig": "cifarlab.config", "Augment": "cifarlab.config",
              "UserError": "cifarlab.errors", "TrainingError": "cifarlab.errors",
              "Interrupted": "cifarlab.errors", "TensorBoard": "cifarlab.callbacks"}
_MODULES = {"callbacks"}  # cl.callbacks.TensorBoard, cl.callbacks.Callback ...
__all__ = sorted(_API | set(_ELSEWHERE) | _MODULES)
_OLD_NAMES = {"trials"}  # still answered (with a DeprecationWarning), no longer listed


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"cifarlab.{name}")
    if name in _API or name in _OLD_NAMES:
        module = importlib.import_module("cifarlab.api")
    elif name in _ELSEWHERE:
        module = importlib.import_module(_ELSEWHERE[name])
    else:
        raise AttributeError(f"module 'cifarlab' has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
