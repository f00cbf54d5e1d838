"""Where a recipe's training step spends its time, and how close it runs to the CPU's peak.

Times `--steps` training steps (augmentation, forward, loss, backward, the recipe's optimizer) at
the recipe's batch size on random CIFAR-sized data (the speed of a fixed network does not depend
on the pixels), counts the FLOPs of one step with torch.utils.flop_counter, and prints the
operators that took the most time under torch.profiler. Run it with nothing else on the machine:

    .venv/bin/python benchmarks/profile_step.py --recipe fast
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from cifarlab import optim
from cifarlab.api import make_config
from cifarlab.augment import augment_batch
from cifarlab.config import TrainConfig
from cifarlab.networks import create_model
from cifarlab.runtime import available_cores
from cifarlab.step import train_step


def step_of(config: TrainConfig) -> tuple[Callable[[], None], int]:
    """A closure running one training step of `config` (augmentation, then `step.train_step`: the
    step that trains), on random CIFAR-sized data; and its batch size. width_speed.py uses it too."""
    torch.manual_seed(0)
    model = create_model(config.model, 10, (127.0,) * 3, (64.0,) * 3, config.model_kwargs)
    memory = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory)  # type: ignore[call-overload]
    optimizer = optim.build(config, model)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (config.batch_size, 3, 32, 32), generator=gen).float()
    images = images.contiguous(memory_format=memory)
    labels = torch.randint(0, 10, (config.batch_size,), generator=gen)

    def step() -> None:
        x = augment_batch(config.augment, images, gen) if config.augment.active else images
        train_step(model, optimizer, x, labels, config)

    return step, config.batch_size


def training_step(recipe: str, batch_size: int | None) -> tuple[Callable[[], None], int]:
    """A closure running one training step of the recipe, and its batch size."""
    given = {"batch_size": batch_size} if batch_size else {}  # None is a value to make_config
    return step_of(make_config(recipe, **given))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--recipe", default="fast", help="(default: fast)")
    parser.add_argument("--batch-size", type=int, help="(default: the recipe's)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps (default: 15)")
    parser.add_argument("--rows", type=int, default=12, help="operators listed (default: 12)")
    args = parser.parse_args()
    torch.set_num_threads(available_cores())
    step, batch = training_step(args.recipe, args.batch_size)
    for _ in range(3):  # warm-up: one-off allocations and oneDNN primitive creation
        step()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    per_step = statistics.median(seconds)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    print(f"{args.recipe}, batch {batch}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads: {per_step * 1000:.0f} ms a step (median of {args.steps}), {batch / per_step:.0f} "
          f"images/s, {flops / batch / 1e9:.3f} GFLOP an image, {flops / per_step / 1e9:.0f} GFLOP/s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{'operator':<44} {'self %':>7} {'ms/step':>8}")
    for event in events[:args.rows]:
        print(f"{event.key[:44]:<44} {100 * event.self_cpu_time_total / total:>6.1f}% "
              f"{event.self_cpu_time_total / 3000:>8.1f}")


if __name__ == "__main__":
    main()
