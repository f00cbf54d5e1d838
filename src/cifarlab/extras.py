"""Optional dependencies, each a pip extra of cifarlab: one way to ask for one, and one message
when it is missing (a line naming what to install, never an ImportError traceback).

    >>> from cifarlab.extras import require
    >>> require("json", "json", "this example")     # present: returns quietly
"""

from __future__ import annotations

import importlib.util

from cifarlab.errors import UserError

# extra -> (the modules it must provide, what pip installs for it)
EXTRAS = {
    "serve": (("fastapi", "uvicorn", "python_multipart"), "fastapi uvicorn python-multipart"),
    "export": (("onnx", "onnxscript"), "onnx onnxscript"),
    "tensorboard": (("tensorboard",), "tensorboard"),
    "search": (("optuna",), "'optuna>=3.6'"),
}


def require(modules: str | tuple[str, ...], extra: str, what: str) -> None:
    """A UserError naming the pip command and the cifarlab extra if a module is missing.

    `modules`: the module(s) to find; `extra`: the cifarlab extra that installs them; `what`: the
    feature that needs them, as the user called it ("cifarlab serve", "--tensorboard").
    """
    names = (modules,) if isinstance(modules, str) else modules
    missing = [m for m in names if importlib.util.find_spec(m) is None]
    if missing:
        packages = EXTRAS[extra][1] if extra in EXTRAS else " ".join(missing)
        raise UserError(f"{what} needs {', '.join(missing)}: pip install {packages} "
                        f"(or: pip install 'cifarlab[{extra}]')")


def require_extra(extra: str, what: str) -> None:
    """Every module of a cifarlab extra (EXTRAS), for the feature `what`."""
    require(EXTRAS[extra][0], extra, what)
