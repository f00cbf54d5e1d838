"""`cifarlab export` and `cifarlab serve`: ship a trained model, as a file or as a web demo.

    cifarlab export runs/base-20261122-101500 --format onnx        # -> RUN/export/model.onnx
    cifarlab export runs/base-20261122-101500 --format torchscript --out model.torchscript.pt
    cifarlab serve runs/base-20261122-101500 --port 8000           # http://127.0.0.1:8000/

Both need optional packages (onnx/onnxscript; fastapi/uvicorn/python-multipart), imported only when
the command runs, so training never needs them. docs/serving.md has the input contract and the API.
"""

from __future__ import annotations

import argparse
from typing import Any

from cifarlab.errors import UserError, warn

SERVE_PACKAGES = "fastapi uvicorn python-multipart"


def register(commands: Any) -> None:
    """Add the export/serve sub-commands to the CLI's sub-parsers."""
    from cifarlab.export import FORMATS
    from cifarlab.serve import Limits

    e = commands.add_parser(
        "export", help="write the model as ONNX or TorchScript, with a JSON sidecar of class names",
        description="Export a model with its normalisation and softmax inside: input uint8 RGB NCHW "
                    "images (N, 3, 32, 32) in 0..255 (TorchScript also takes float), outputs 'probs' "
                    "and 'logits'. The class names go to FILE.json.")
    e.add_argument("model", metavar="RUN_OR_CKPT", help="run directory or model.pt")
    e.add_argument("--format", choices=list(FORMATS), default="onnx", help="default: onnx")
    e.add_argument("--out", metavar="FILE",
                   help="output file or folder (default: RUN/export/model.onnx or model.torchscript.pt)")
    e.set_defaults(func=cmd_export)

    defaults = Limits()
    s = commands.add_parser(
        "serve", help="web demo and JSON API for a model (POST /predict)",
        description="Serve a page to classify your images, and a JSON API: POST /predict, GET /health, "
                    "GET /openapi.json. Binds to 127.0.0.1 unless told otherwise.")
    s.add_argument("model", metavar="RUN_OR_CKPT", help="run directory or model.pt")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: everyone)")
    s.add_argument("--port", type=int, default=8000, help="default: 8000 (0: any free port)")
    s.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20,
                   help="largest upload accepted, in MB (default: %(default)g)")
    s.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                   help="largest image accepted, width x height, checked before decoding "
                        "(default: %(default)d)")
    s.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency,
                   help="uploads in flight at once; more are answered 503 (default: %(default)d)")
    s.set_defaults(func=cmd_serve)


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cifarlab.export import export_model

    out, sidecar = export_model(args.model, args.format, Path(args.out) if args.out else None)
    print(f"wrote {out} ({args.format}, {out.stat().st_size / 2**20:.1f} MB) and {sidecar}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from cifarlab.export import require
    from cifarlab.serve import Limits, serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    limits = Limits.from_megabytes(args.max_upload_mb, max_pixels=args.max_pixels,
                                   max_concurrency=args.max_concurrency)
    require(["fastapi", "uvicorn", "python_multipart"], SERVE_PACKAGES, "cifarlab serve")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"listening on {args.host}: other machines can reach this server")
    serve(args.model, args.host, args.port, limits)
    return 0
