"""The process torchrun starts for `nproc=N` (`--nproc N`): it reads its job from one file the
parent wrote (the resolved config and the run folder, or the run to resume) and trains. The
parent resolved every setting once and claimed the run folder, so the workers neither parse a
command line again nor create a folder of their own (but with --nnodes, where every machine's
parent names the same shared folder: then global rank 0 claims it). The loggers (TensorBoard,
MLflow) are made here, in each process; rank 0's log.

    python -m cifarlab.worker JOB.json     # what each torchrun process runs; not for users
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

from cifarlab import distributed
from cifarlab.errors import WorkersFailed


def run_processes(nproc: int, job: dict[str, Any], nnodes: int = 1,
                  endpoint: str | None = None) -> None:
    """Run `job` in `nproc` processes on this machine (one of `nnodes` that meet at `endpoint`);
    WorkersFailed if one of them failed."""
    fd, path = tempfile.mkstemp(prefix="cifarlab-job-", suffix=".json")  # private: mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(job, handle)
        code = distributed.launch(nproc, ["-m", "cifarlab.worker", path], nnodes=nnodes,
                                  endpoint=endpoint)
    finally:
        os.unlink(path)
    if code != 0:
        raise WorkersFailed(code)


def _work(job: dict[str, Any]) -> int:
    from cifarlab import trainer
    from cifarlab.callbacks import loggers
    from cifarlab.config import TrainConfig

    if job["action"] == "train":
        config = TrainConfig.from_dict(job["config"])
        trainer.train(config, job["run_dir"], quiet=job["quiet"], claimed=job.get("claimed", True),
                      callbacks=loggers(config, job.get("mlflow")))
    else:
        trainer.resume(job["run_dir"], job["changes"], model=job.get("model"), quiet=job["quiet"],
                       callbacks=loggers(None, job.get("mlflow")))
    return 0


def main(argv: list[str] | None = None) -> int:
    from cifarlab.cli import guarded
    from cifarlab.errors import shell_voice

    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0], encoding="utf-8") as handle:
        job = json.load(handle)
    with shell_voice():
        return guarded(lambda: _work(job))


if __name__ == "__main__":
    sys.exit(main())
