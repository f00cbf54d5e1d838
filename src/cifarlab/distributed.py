"""Multi-process training on torch.distributed: the few lines nanoGPT keeps inline, in one place.

torchrun starts one process per device and tells each who it is through the environment (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). The trainer reads that here, joins the process
group (NCCL on GPUs, gloo on CPUs) and wraps its model in DistributedDataParallel; rank 0 alone
writes the run directory and prints. See docs/distributed.md.

    torchrun --standalone --nproc-per-node 4 -m cifarlab train --recipe bn   # 4 GPUs, one machine
    cifarlab train --recipe bn --nproc 4                                      # the same, shorter
    cifarlab train --recipe bn --nproc 4 --nnodes 2 --rdzv-endpoint HOST:29400 --out /shared/r
                                                          # on each of 2 machines (docs/distributed.md)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cifarlab.errors import TrainingError, UserError


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


class PeerLost(TrainingError):
    """Another training process stopped mid-run (killed, or its machine went down), so the
    collectives this one waits on can never finish: one line, exit code 1, and how to go on."""


# What gloo and NCCL say when the process at the other end is gone.
LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused",
        "timed out", "Timed out", "NCCL communicator was aborted", "remote process exited")


def lost_peer(exc: BaseException) -> str | None:
    """Why, if `exc` is a collective (all-reduce, broadcast, DDP's gradient sync) that lost a
    peer; None for any other error."""
    if not isinstance(exc, RuntimeError) or not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(exc)
    reason = next((phrase for phrase in LOST if phrase in text), None)
    if reason is None and not isinstance(exc, dist.DistError) and "gloo" not in text:
        return None
    return reason or text.strip().splitlines()[0].split("] ", 1)[-1][:160]


@contextlib.contextmanager
def owned_group(run_dir: object = None) -> Iterator[None]:
    """Leave the process group on exit if it was joined inside the block (not one the caller made).
    A collective that lost another process becomes PeerLost, naming the run to resume."""
    existed = dist.is_available() and dist.is_initialized()
    finished = False
    try:
        yield
        finished = True
    except RuntimeError as exc:
        reason = lost_peer(exc)
        if reason is None:
            raise
        where = (f"; its last checkpoint is in {run_dir}: when every node is back, continue with "
                 f"--resume {run_dir}") if run_dir is not None else ""
        raise PeerLost(f"lost contact with another training process ({reason}): it stopped, or "
                       f"its machine did{where}") from None
    finally:
        if not existed and dist.is_available() and dist.is_initialized():
            if finished:  # leave together: gloo torn down under a peer still talking can abort it
                dist.barrier()  # (seen once in CI: "terminate called without an active exception")
            dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_sum(values: Sequence[float] | torch.Tensor, device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (float64: exact for counts below 2**53); `values`
    may be a tensor already on `device`, so that it is read once, after the sum."""
    tensor = (values.to(device, torch.float64) if isinstance(values, torch.Tensor)
              else torch.tensor(values, dtype=torch.float64, device=device))
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]


def from_main(values: Sequence[float], device: torch.device) -> list[float]:
    """Rank 0's numbers, on every process (e.g. the validation metrics only rank 0 computed)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.broadcast(tensor, src=0)
    return [float(v) for v in tensor.tolist()]


def launch(nproc: int, argv: list[str], nnodes: int = 1, endpoint: str | None = None) -> int:
    """Run `python ARGV` (e.g. ["-m", "cifarlab.worker", JOB]) in `nproc` processes on this
    machine with torchrun's elastic launcher.

    Like `torchrun --standalone --nproc-per-node NPROC ARGV`: a rendezvous on a free
    port of 127.0.0.1 (not "localhost", which may resolve to an IPv6 address nothing listens on),
    and every worker stopped if one fails. With `nnodes` > 1, this machine is one of several that
    all run the same command: like `torchrun --nnodes N --rdzv-backend c10d --rdzv-endpoint
    HOST:PORT`, the first to start listens at `endpoint` and the others join it. Returns the
    workers' exit code; the workers said why themselves, so the agent's logs stay quiet.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError, RendezvousTimeoutError

    if from_env().enabled:
        raise UserError("--nproc starts its own processes; under torchrun leave it out")
    if nproc < 1:
        raise UserError("--nproc must be at least 1")
    if nnodes < 1:
        raise UserError("--nnodes must be at least 1")
    if nnodes > 1 and not endpoint:
        raise UserError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT: one of the machines, "
                        "reachable from the others, the same on every one")
    # The trainer sets its own thread count (cores / processes); this only spares the user
    # torchrun's banner about OMP_NUM_THREADS.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The workers' own messages say what happened; the agent's log lines only repeat it. (Each of
    # torch's elastic modules sets its own logger's level, so the parent's would not do.)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    where = ([f"--nnodes={nnodes}", f"--rdzv-endpoint={endpoint}", "--rdzv-id=cifarlab"]
             if nnodes > 1 else
             ["--nnodes=1", "--rdzv-endpoint=127.0.0.1:0", f"--rdzv-id=cifarlab-{uuid.uuid4().hex}"])
    args = torchrun.parse_args([*where, f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
                                "--monitor-interval=0.2", *argv])
    with _said_by_workers() as said:
        try:
            torchrun.run(args)
        except ChildFailedError as exc:
            codes = [f.exitcode for f in exc.failures.values()]
            if not said() and not any(c > 0 for c in codes):  # killed by a signal: said nothing
                print(f"cifarlab: a training process was killed by signal {-min(codes)}",
                      file=sys.stderr)
            return next((c for c in codes if c > 0), 1)
        except SignalException:
            return 130
        except RendezvousTimeoutError:
            print(f"cifarlab: error: the other machines did not join the rendezvous at {endpoint} "
                  f"in time: start the same command on all {nnodes}", file=sys.stderr)
            return 1
        except (RendezvousError, dist.DistError) as exc:  # the machine that held it died
            if not said():  # a worker that lost its peers has said so, and how to resume
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                print(f"cifarlab: error: lost the rendezvous at {endpoint} (did another machine "
                      f"stop?): {first}", file=sys.stderr)
            return 1
    return 0


REPORTED = "CIFARLAB_REPORTED"  # a file a worker touches when it has printed why it failed


@contextlib.contextmanager
def _said_by_workers() -> Iterator[Any]:
    """Whether a worker has already printed why it failed (cli._say touches the file named in
    $CIFARLAB_REPORTED): then the launcher adds nothing, and a failure stays one line."""
    import tempfile

    fd, marker = tempfile.mkstemp(prefix="cifarlab-reported-")
    os.close(fd)
    os.unlink(marker)
    before = os.environ.get(REPORTED)
    os.environ[REPORTED] = marker
    try:
        yield lambda: os.path.exists(marker)
    finally:
        if before is None:
            os.environ.pop(REPORTED, None)
        else:
            os.environ[REPORTED] = before
        with contextlib.suppress(OSError):
            os.unlink(marker)
