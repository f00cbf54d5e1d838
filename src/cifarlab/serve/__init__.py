"""The web demo and JSON API for a trained model: an optional wing (`pip install 'cifarlab[serve]'`).

    app.py      the FastAPI app, upload guards and the server (`cifarlab serve`, `Run.serve`)
    limits.py   the bounds on uploads, time and concurrency (`Limits`)
    page.py     the one self-contained HTML page

Names load on first use (fastapi and uvicorn only inside functions), so `cifarlab serve --help`,
which reads limits.py, imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Limits", "allowed_hosts", "create_app", "host_allowed", "listen", "serve", "uvicorn_config"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'cifarlab.serve' has no attribute {name!r}")
    module = "cifarlab.serve.limits" if name == "Limits" else "cifarlab.serve.app"
    return getattr(importlib.import_module(module), name)
