"""Where code runs and how it is seeded: threads, device, seeds, versions, and the uint8 -> float
batch conversion. Small helpers every part of cifarlab shares (training, evaluation, the lr
finder, the search), kept here so that none of them imports another for them.

    >>> from cifarlab import runtime
    >>> runtime.seed_for(0, 1, 2) == runtime.seed_for(0, 1, 2) != runtime.seed_for(0, 2, 1)
    True
"""

from __future__ import annotations

import os
import platform

import numpy as np
import torch

from cifarlab import __version__, distributed
from cifarlab.errors import UserError


def available_cores() -> int:
    """Threads to use: $CIFARLAB_THREADS, else the cores this process may run on.

    More threads than free cores is far worse than fewer: OpenMP threads spin-wait for each
    other, and two 2-thread trainings on 2 cores each run ~10x slower. Set CIFARLAB_THREADS=1
    for a second job running beside a first. Processes that torchrun starts on one machine share
    its cores.
    """
    env = os.environ.get("CIFARLAB_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // distributed.from_env().local_world_size)


def versions() -> dict[str, str]:
    """What a run was trained with: recorded in config.json beside the settings."""
    return {"cifarlab": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def seed_for(seed: int, *keys: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, step, stream, rank ...): a hash, so
    nearby keys never share a seed (a linear mix would: epoch 1 step 0 = epoch 0 step 101)."""
    state = np.random.SeedSequence([seed % 2**64, *keys]).generate_state(1, np.uint64)
    return int(state[0] >> 1)  # torch seeds must fit in an int64


def generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded by `seed_for(seed, *keys)`."""
    return torch.Generator().manual_seed(seed_for(seed, *keys))


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device `name` means; under torchrun, `local_rank` picks this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available")
    device = torch.device(name)
    if device.type == "cuda" and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {local_rank} has no GPU: this machine has "
                            f"{torch.cuda.device_count()}; start at most that many per machine")
        device = torch.device("cuda", local_rank)
    return device


def to_batch(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC images to an NCHW float tensor in channels_last layout (no copy of the layout)."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # e.g. a decoded image's read-only buffer: torch wants to own it
    tensor = torch.as_tensor(images).to(device, non_blocking=True)
    return tensor.permute(0, 3, 1, 2).float()


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on GPUs (their tensor cores run it several times faster); fp32 on the CPU,
    which has no fast bf16 here."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
