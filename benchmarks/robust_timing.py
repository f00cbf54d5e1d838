"""What the robustness augmentations cost a training step: recipes timed in alternating pairs.

Each round times `--steps` training steps of every recipe in turn (augmentation, forward, loss,
backward, optimizer; budget.measure_rates on random data, whose pixels do not change the cost),
so that a shared machine's load changes hit every recipe alike; the median over the rounds of
each recipe's time relative to the first one is the figure to trust. Run alone for absolute
times; on a busy machine only the ratios mean something.

    CIFARLAB_THREADS=1 python benchmarks/robust_timing.py --recipes fast fast_robust --rounds 7
    python benchmarks/robust_timing.py --recipes fast fast_robust \\
        --variant "augmix only=augment.prime=false"      # a recipe with --set changes
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from torch import nn

from cifarlab import budget
from cifarlab.api import make_config
from cifarlab.budget import measure_rates
from cifarlab.config import TrainConfig, apply, parse_sets
from cifarlab.networks import create_model
from cifarlab.runtime import available_cores

EPOCH_IMAGES = 45_000


def make_model(config: TrainConfig) -> Callable[[], nn.Module]:
    return lambda: create_model(config.model, 10, (127.0,) * 3, (64.0,) * 3, config.model_kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["fast", "fast_robust"])
    parser.add_argument("--variant", action="append", default=[],
                        help="LABEL=key=value[,key=value]: the last recipe with these changes")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(available_cores())
    budget.PROBE_STEPS, budget.PROBE_WARMUP = args.steps, args.warmup  # the budget's probe, longer
    configs = {name: make_config(name) for name in args.recipes}
    for variant in args.variant:
        label, _, sets = variant.partition("=")
        configs[label] = apply(make_config(args.recipes[-1]), parse_sets(sets.split(",")))
    times: dict[str, list[float]] = {name: [] for name in configs}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rounds} rounds of "
          f"{args.steps} steps per recipe, alternating", flush=True)
    for r in range(args.rounds):
        for name, config in configs.items():
            times[name].append(measure_rates(config, torch.device("cpu"), 10, make_model(config),
                                             EPOCH_IMAGES)[0])
        print(f"round {r + 1}: " + ", ".join(f"{n} {t[-1] * 1000:.0f} ms" for n, t in times.items()),
              flush=True)
    first = next(iter(times))
    print(f"{'recipe':<24} {'ms/step':>8} {'s/epoch':>8} {'x ' + first:>12}")
    for name, values in times.items():
        ratio = statistics.median(v / f for v, f in zip(values, times[first], strict=True))
        per_step = statistics.median(values)
        batch = configs[name].batch_size
        print(f"{name:<24} {per_step * 1000:>8.0f} {EPOCH_IMAGES / batch * per_step:>8.0f} "
              f"{ratio:>12.3f}")


if __name__ == "__main__":
    main()
