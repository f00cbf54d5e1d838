"""The process torchrun starts for `nproc=N` (`--nproc N`): it reads its job from one file the
parent wrote (the resolved config and the run folder, or the run to resume) and trains. The
parent resolved every setting once and claimed the run folder, so the workers neither parse a
command line again nor create a folder of their own.

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


def run_processes(nproc: int, job: dict[str, Any]) -> None:
    """Run `job` in `nproc` processes on this machine; WorkersFailed if one of them failed."""
    fd, path = tempfile.mkstemp(prefix="cifarlab-job-", suffix=".json")  # private: mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(job, handle)
        code = distributed.launch(nproc, ["-m", "cifarlab.worker", path])
    finally:
        os.unlink(path)
    if code != 0:
        raise WorkersFailed(code)


def _work(job: dict[str, Any]) -> int:
    from cifarlab import trainer
    from cifarlab.config import TrainConfig

    if job["action"] == "train":
        trainer.train(TrainConfig.from_dict(job["config"]), job["run_dir"], quiet=job["quiet"],
                      claimed=True)
    else:
        trainer.resume(job["run_dir"], job["changes"], model=job.get("model"), quiet=job["quiet"])
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
