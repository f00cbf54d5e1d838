"""Seconds to generate each CIFAR-10-C corruption for N images on this machine (prints a table).

The corrupted images are made afresh for every robustness measurement (nothing is cached), so
their cost adds to the model's: the full 15 x 5 grid corrupts 75 x N images. Random CIFAR-sized
images stand in for real ones unless --data is given (only frost, fog and snow care little either
way; the speed of the others does not depend on the pixels).

    CIFARLAB_THREADS=1 .venv/bin/python benchmarks/corruption_speed.py --images 5000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cifarlab.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from cifarlab.runtime import available_cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--severities", default="1,3,5", help="comma-separated, 1..5")
    parser.add_argument("--data", help="a data source: time on its first N training images")
    args = parser.parse_args()
    torch.set_num_threads(available_cores())
    severities = [int(s) for s in args.severities.split(",")]
    if args.data:
        from cifarlab.data import load_dataset
        images = load_dataset(args.data, quiet=True).splits["train"].images[:args.images]
    else:
        images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"seconds to corrupt {len(images)} images")
    print(f"{'corruption':<18}" + "".join(f"{'sev ' + str(s):>8}" for s in severities))
    total = 0.0
    for name in CORRUPTIONS:
        row = []
        for severity in severities:
            start = time.perf_counter()
            corrupt(images, name, severity, seed=0)
            row.append(time.perf_counter() - start)
        total += sum(row) / len(row)
        print(f"{name:<18}" + "".join(f"{t:>8.2f}" for t in row), flush=True)
    print(f"mean over severities, all 15: {total:.1f} s; the full grid of "
          f"{len(SEVERITIES)} severities: about {total * len(SEVERITIES):.0f} s")


if __name__ == "__main__":
    main()
