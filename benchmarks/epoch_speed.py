"""Seconds per epoch of each recipe's training step on this machine (prints a table).

Times `--steps` optimizer steps after `--warmup` steps on random CIFAR-sized data (the speed of a
fixed network does not depend on the pixels), then projects one epoch of 45,000 images. Also
compares channels_last with the default NCHW layout. Run it with nothing else on the machine:

    .venv/bin/python benchmarks/epoch_speed.py --recipes base robust bn --repeats 3
"""

from __future__ import annotations

import argparse
import statistics

import torch

from cifarlab.api import make_config
from cifarlab.budget import measure_rates
from cifarlab.runtime import available_cores

EPOCH_IMAGES = 45_000


def time_steps(recipe: str, channels_last: bool, steps: int, warmup: int) -> float:
    """Seconds per training step (augmentation included) for one recipe and layout."""
    config = make_config(recipe, channels_last=channels_last)
    return measure_rates(config, torch.device("cpu"), 10, steps, warmup)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["base", "robust", "bn"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="report the median of this many")
    args = parser.parse_args()
    torch.set_num_threads(available_cores())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median of {args.repeats} x {args.steps} steps")
    print(f"{'recipe':<8} {'layout':<14} {'ms/step':>8} {'images/s':>9} {'s/epoch':>8}")
    for recipe in args.recipes:
        batch = make_config(recipe).batch_size
        for channels_last in (True, False):
            per_step = statistics.median(
                time_steps(recipe, channels_last, args.steps, args.warmup) for _ in range(args.repeats))
            layout = "channels_last" if channels_last else "NCHW"
            print(f"{recipe:<8} {layout:<14} {per_step * 1000:>8.1f} {batch / per_step:>9.0f} "
                  f"{EPOCH_IMAGES / batch * per_step:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
