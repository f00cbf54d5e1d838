"""ReLU then MaxPool (the seed's Keras order) against MaxPool then ReLU (cifarlab's), side by side.

The two orders compute the same outputs and gradients (max and ReLU commute; tests/test_models.py
checks it), but the second applies the ReLU, and its backward, to a quarter of the values. Times
a training step of the seed's `base` CNN (Adam, batch 64, channels_last) in both orders,
alternating rounds so that both see the same state of a noisy machine:

    .venv/bin/python benchmarks/relu_pool_order.py --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.networks import create_model
from cifarlab.runtime import available_cores


def keras_order(model: nn.Module) -> nn.Module:
    """The same modules (and weights) with every MaxPool -> ReLU pair swapped back."""
    layers = list(model.body)  # type: ignore[arg-type]
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    reordered = create_model("base", 10, (127.0,) * 3, (64.0,) * 3)
    reordered.body = nn.Sequential(*layers)
    return reordered


def median_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, steps: int) -> float:
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss.detach())
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds (default: 9)")
    parser.add_argument("--steps", type=int, default=55, help="steps a round (default: 55)")
    args = parser.parse_args()
    torch.set_num_threads(available_cores())
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 3, 32, 32, generator=gen) * 255).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), generator=gen)
    ours = create_model("base", 10, (127.0,) * 3, (64.0,) * 3)
    theirs = keras_order(create_model("base", 10, (127.0,) * 3, (64.0,) * 3))
    models = {"ReLU -> MaxPool (Keras)": theirs, "MaxPool -> ReLU (cifarlab)": ours}
    times: dict[str, list[float]] = {name: [] for name in models}
    optimizers = {}
    for name, model in models.items():
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        optimizers[name] = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name].append(median_step(model, optimizers[name], x, y, args.steps))
    print(f"base, batch 64, {torch.get_num_threads()} threads, ms a training step "
          f"(median of each round; {args.rounds} alternating rounds):")
    for name, values in times.items():
        print(f"{name:<28} median {1000 * statistics.median(values):5.1f}   rounds: "
              + " ".join(f"{1000 * v:.1f}" for v in values))
    keras, ours_ms = (statistics.median(v) for v in times.values())
    print(f"speed-up {keras / ours_ms:.2f}x")


if __name__ == "__main__":
    main()
