"""airbench94_muon's own script on cifarlab's split of a data source: round three's anchor (issue 23).

The script is not part of cifarlab: fetch it (github.com/KellerJordan/cifar10-airbench,
airbench94_muon.py) and pass its path. It needs a CUDA GPU and torchvision. This writes the data
files the script reads (cifar10/train.pt and cifar10/test.pt in a work folder) from cifarlab's
"train" and "val" splits, so that it trains on the same 45,000 images `fast` trains on and reports
on the same 5,000 held out (never the test split), then runs it there:

    python benchmarks/airbench_anchor.py --script airbench94_muon.py \\
        --data ../shared/data/cifar10-train-jpeg.tgz --runs 5 --work /tmp/airbench

Two changes are made to a copy of the script, both printed: the number of runs (its 200 become
--runs), and with --compile-mode the mode of its torch.compile (its "max-autotune" searches kernels
for minutes; "default" compiles in about a minute). Its own output follows: a row per epoch with
val accuracy and its timer (CUDA events around training and TTA, compilation excluded), and the
mean and std of the TTA accuracy over the runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from cifarlab.api import load_data


def write_split(data: str, folder: Path) -> tuple[int, int]:
    """The script's train.pt and test.pt: uint8 NHWC images, int64 labels, the class names."""
    dataset = load_data(data, quiet=True)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = []
    for split, name in (("train", "train.pt"), ("val", "test.pt")):
        part = dataset.splits[split]
        torch.save({"images": torch.from_numpy(part.images.copy()),
                    "labels": torch.from_numpy(part.labels.astype("int64")),
                    "classes": list(dataset.classes)}, folder / name)
        sizes.append(len(part.labels))
    return sizes[0], sizes[1]


def patched(source: str, runs: int, compile_mode: str | None) -> str:
    """The script with its run count (and, if asked, its compile mode) changed; each change
    must find its text, so a different version of the script fails loudly instead of silently."""
    changes = [("for run in range(200)", f"for run in range({runs})")]
    if compile_mode:
        changes.append(('model.compile(mode="max-autotune")',
                        "model.compile()" if compile_mode == "default"
                        else f'model.compile(mode="{compile_mode}")'))
    for old, new in changes:
        if old not in source:
            raise SystemExit(f"error: the script has no '{old}': is it airbench94_muon.py?")
        source = source.replace(old, new)
        print(f"changed: {old!r} -> {new!r}", flush=True)
    return source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", type=Path, required=True, help="airbench94_muon.py, fetched")
    parser.add_argument("--data", required=True, help="a cifarlab data source")
    parser.add_argument("--work", type=Path, default=Path("/tmp/airbench"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compile-mode", default=None,
                        help='"default" or another torch.compile mode instead of "max-autotune"')
    parser.add_argument("--prepare-only", action="store_true", help="write the data files, run nothing")
    args = parser.parse_args()
    n_train, n_val = write_split(args.data, args.work / "cifar10")
    print(f"data: {n_train} train and {n_val} val images (cifarlab's split) in {args.work / 'cifar10'}",
          flush=True)
    script = args.work / "airbench94_muon_run.py"
    script.write_text(patched(args.script.read_text(), args.runs, args.compile_mode))
    if args.prepare_only:
        return 0
    return subprocess.call([sys.executable, script.name], cwd=args.work)


if __name__ == "__main__":
    sys.exit(main())
