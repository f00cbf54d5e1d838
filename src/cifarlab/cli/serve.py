"""`cifarlab serve`: a web demo and JSON API for one model (serve.py does the work).

    cifarlab serve runs/base-20261122-101500 --port 8000           # http://127.0.0.1:8000/

Needs fastapi, uvicorn and python-multipart, imported only when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from cifarlab.cli import options
from cifarlab.errors import UserError, warn


def register(commands: Any) -> None:
    """Add the serve sub-command to the CLI's sub-parsers."""
    from cifarlab.serve.limits import Limits

    defaults = Limits()
    s = commands.add_parser(
        "serve", help="web demo and JSON API for a model (POST /predict)",
        description="Serve a page to classify your images, and a JSON API: POST /predict, GET /health, "
                    "GET /openapi.json. Binds to 127.0.0.1 unless told otherwise.")
    s.add_argument("run", metavar="RUN", help="run directory (or a model.pt file)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: everyone)")
    s.add_argument("--port", type=int, default=8000,
                   help="port to listen on; 0: any free port (default: 8000)")
    s.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20,
                   help="largest upload accepted, in MB (default: %(default)g)")
    s.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                   help="largest image accepted, width x height, checked before decoding "
                        "(default: %(default)d)")
    s.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency,
                   help="uploads in flight at once; more are answered 503 (default: %(default)d)")
    options.weights(s)
    options.model(s)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import cifarlab as cl
    from cifarlab.extras import require_extra
    from cifarlab.serve.limits import Limits

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    limits = Limits.from_megabytes(args.max_upload_mb, max_pixels=args.max_pixels,
                                   max_concurrency=args.max_concurrency)
    require_extra("serve", "cifarlab serve")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"listening on {args.host}: other machines can reach this server")
    cl.load(args.run, model=args.model).serve(args.host, args.port, args.weights, limits=limits)
    return 0
