"""`cifarlab export`: the model as ONNX or TorchScript, normalisation and softmax inside.

    cifarlab export runs/base-20261122-101500 --format onnx        # -> RUN/export/model.onnx
    cifarlab export runs/base-20261122-101500 --format torchscript --out model.torchscript.pt
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cifarlab.cli import options

FORMATS = ("onnx", "torchscript")  # export.FORMATS holds their suffixes


def register(commands: Any) -> None:
    e = commands.add_parser(
        "export", help="write the model as ONNX or TorchScript, with a JSON sidecar of class names",
        description="Export a model with its normalisation and softmax inside: input uint8 RGB NCHW "
                    "images (N, 3, 32, 32) in 0..255 (TorchScript also takes float), outputs 'probs' "
                    "and 'logits'. The class names go to FILE.json.")
    e.add_argument("run", metavar="RUN", help="run directory (or a model.pt file)")
    e.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx (onnxruntime, browsers, other languages) or torchscript (PyTorch "
                        "without cifarlab) (default: onnx)")
    e.add_argument("--out", metavar="FILE",
                   help="output file or folder (default: RUN/export/model.onnx or model.torchscript.pt)")
    options.weights(e)
    options.model(e)
    options.json_flag(e, 'print {"model": FILE, "classes": FILE.json, "format": ...}')
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import cifarlab as cl
    from cifarlab.export import sidecar_path

    out = cl.load(args.run, model=args.model).export(args.format, args.out, args.weights)
    sidecar = sidecar_path(out)
    if args.json:
        print(json.dumps({"model": str(out), "classes": str(sidecar), "format": args.format,
                          "bytes": out.stat().st_size}))
        return 0
    print(f"wrote {out} ({args.format}, {out.stat().st_size / 2**20:.1f} MB) and {sidecar}")
    return 0
