"""Multi-process training on torch.distributed: the few lines nanoGPT keeps inline, in one place.

torchrun starts one process per device and tells each who it is through the environment (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). The trainer reads that here, joins the process
group (NCCL on GPUs, gloo on CPUs) and wraps its model in DistributedDataParallel; rank 0 alone
writes the run directory and prints. See docs/distributed.md.

    torchrun --standalone --nproc-per-node 4 -m cifarlab train --recipe bn   # 4 GPUs, one machine
    cifarlab train --recipe bn --nproc 4                                      # the same, shorter
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cifarlab.errors import UserError


@dataclass(frozen=True)
class Context:
    """Where this process stands among the training processes (all 0/1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Context:
    """The context torchrun's environment describes; a plain process is rank 0 of 1."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    raw = [os.environ.get(name, "") for name in names]
    if not raw[1]:
        return Context()
    try:
        rank, world, local, local_world = (int(v) if v else d for v, d in zip(raw, (0, 1, 0, 1),
                                                                             strict=True))
    except ValueError as exc:
        raise UserError(f"bad torchrun environment {dict(zip(names, raw, strict=True))}") from exc
    if not (0 <= rank < world and 0 <= local < max(local_world, 1)):
        raise UserError(f"bad torchrun environment {dict(zip(names, raw, strict=True))}")
    return Context(rank, world, local, max(local_world, 1))


def init(ctx: Context, device: torch.device) -> None:
    """Join the process group once: NCCL for CUDA devices, gloo for the CPU."""
    if not ctx.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


@contextlib.contextmanager
def owned_group() -> Iterator[None]:
    """Leave the process group on exit if it was joined inside the block (not one the caller made)."""
    existed = dist.is_available() and dist.is_initialized()
    finished = False
    try:
        yield
        finished = True
    finally:
        if not existed and dist.is_available() and dist.is_initialized():
            if finished:  # leave together: gloo torn down under a peer still talking can abort it
                dist.barrier()  # (seen once in CI: "terminate called without an active exception")
            dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (float64: exact for counts below 2**53)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]


def from_main(values: Sequence[float], device: torch.device) -> list[float]:
    """Rank 0's numbers, on every process (e.g. the validation metrics only rank 0 computed)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.broadcast(tensor, src=0)
    return [float(v) for v in tensor.tolist()]


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python ARGV` (e.g. ["-m", "cifarlab.worker", JOB]) in `nproc` processes on this
    machine with torchrun's elastic launcher.

    Like `torchrun --standalone --nproc-per-node NPROC ARGV`: a rendezvous on a free
    port of 127.0.0.1 (not "localhost", which may resolve to an IPv6 address nothing listens on),
    and every worker stopped if one fails. Returns the workers' exit code.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if from_env().enabled:
        raise UserError("--nproc starts its own processes; under torchrun leave it out")
    if nproc < 1:
        raise UserError("--nproc must be at least 1")
    # The trainer sets its own thread count (cores / processes); this only spares the user
    # torchrun's banner about OMP_NUM_THREADS.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The workers' own messages say what happened; the agent's log lines only repeat it. (Each of
    # torch's elastic modules sets its own logger's level, so the parent's would not do.)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = torchrun.parse_args([
        "--nnodes=1", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0", f"--rdzv-id=cifarlab-{uuid.uuid4().hex}",
        "--monitor-interval=0.2", *argv])
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        if not any(c > 0 for c in codes):  # negative: killed by a signal, so it said nothing
            print(f"cifarlab: a training process was killed by signal {-min(codes)}",
                  file=sys.stderr)
        return next((c for c in codes if c > 0), 1)
    except SignalException:
        return 130
    return 0
