"""Training-step time of fastnet at several widths, in alternating rounds, so that every width sees
the same state of a shared machine (the ratios hold under load; the absolute times only alone).

Each round runs `--steps` training steps (`step.train_step`: forward, loss, backward, the recipe's
optimizer; augmentation as the recipe sets it) of every width in turn, on random CIFAR-sized data
(the speed of a fixed network does not depend on the pixels). Prints the median time a step and
an image of each width, and its ratio to the first:

    .venv/bin/python benchmarks/width_speed.py --recipe quick --widths 32/128/128 32/96/96
    .venv/bin/python benchmarks/width_speed.py --recipe fast_small --widths 32/128/128 64/128/128
    .venv/bin/python benchmarks/width_speed.py --recipe quick --widths 32/96/96 32/96/96@128

A width written C1/C2/C3@B runs at batch B (else the recipe's, or --batch-size).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from profile_step import step_of  # benchmarks/ is on sys.path when a script here runs

from cifarlab.api import make_config
from cifarlab.runtime import available_cores


def stepper(recipe: str, widths: list[int], batch_size: int | None) -> tuple[Callable[[], None], int]:
    """One training step of `recipe` with fastnet at `widths`, as a closure; and its batch size."""
    given = {"batch_size": batch_size} if batch_size else {}
    return step_of(make_config(recipe, model_kwargs={"widths": widths}, model="fastnet", **given))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--recipe", default="fast_small", help="(default: fast_small)")
    parser.add_argument("--widths", nargs="+", default=["32/128/128", "64/128/128"],
                        help="C1/C2/C3 of each net (default: 32/128/128 64/128/128)")
    parser.add_argument("--batch-size", type=int, help="(default: the recipe's)")
    parser.add_argument("--rounds", type=int, default=9, help="(default: 9)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps a width a round (default: 5)")
    args = parser.parse_args()
    torch.set_num_threads(available_cores())
    nets = {}
    for spec in args.widths:
        widths, _, batch = spec.partition("@")
        nets[spec] = stepper(args.recipe, [int(c) for c in widths.split("/")],
                             int(batch) if batch else args.batch_size)
    for step, _ in nets.values():  # warm-up: one-off allocations and oneDNN primitive creation
        step()
        step()
    times: dict[str, list[float]] = {w: [] for w in nets}
    for _ in range(args.rounds):
        for w, (step, _) in nets.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[w].append((time.perf_counter() - start) / args.steps)
    first = statistics.median(times[args.widths[0]])
    print(f"{args.recipe}, {torch.get_num_threads()} threads, median of {args.rounds} alternating "
          f"rounds of {args.steps} steps:")
    for w, (_, batch) in nets.items():
        median = statistics.median(times[w])
        print(f"  {w:>12}: {median * 1000:7.0f} ms a step of {batch}, {batch / median:6.0f} images/s, "
              f"x{median / first:.2f} of {args.widths[0]}")


if __name__ == "__main__":
    main()
