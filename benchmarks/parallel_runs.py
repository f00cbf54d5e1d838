"""Train several runs at once, each in its own process, and collect their figures in one table.

Made for a machine with one large GPU and many cores (many small CIFAR runs share it well) or for
several seeds of one recipe; on a 2-core CPU run one at a time (`--jobs 1`). Each job is a line
`NAME: cifarlab train options` in a jobs file; `--out` gets NAME/ run folders, results.json (the
summary and per-epoch val accuracy of each run) and results.md.

    python benchmarks/parallel_runs.py jobs.txt --data ../shared/data/cifar10-train-jpeg.tgz \\
        --out /tmp/par --jobs 8 --timeout 500

A jobs file:
    fast-s0: --recipe fast --seed 0
    muon-s0: --recipe fast_muon --seed 0 --set muon_lr=0.17
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def read_jobs(path: Path) -> list[tuple[str, list[str]]]:
    jobs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, args = line.partition(":")
            jobs.append((name.strip(), shlex.split(args)))
    return jobs


def collect(run: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if (run / "summary.json").is_file():
        result["summary"] = json.loads((run / "summary.json").read_text())
    if (run / "metrics.csv").is_file():
        lines = (run / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        # an epoch that eval_every skipped has an empty cell: NaN
        result["val_acc"] = [float(row.split(",")[header.index("val_acc")] or "nan") for row in lines[1:]]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", dest="parallel", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for all jobs")
    parser.add_argument("--threads", type=int, default=1, help="CIFARLAB_THREADS per job")
    args = parser.parse_args()
    jobs = read_jobs(args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CIFARLAB_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    # Decode once, so the jobs read the cache instead of racing to fill it.
    subprocess.run([sys.executable, "-m", "cifarlab", "data", "--data", args.data, "--quiet"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    started, deadline = time.time(), time.time() + args.timeout
    pending, running, results = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name, extra = pending.pop(0)
            log = (args.out / f"{name}.log").open("w")
            cmd = [sys.executable, "-m", "cifarlab", "train", "--data", args.data,
                   "--out", str(args.out / name), "--quiet", *extra]
            running[name] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT),
                             time.time())
        for name, (proc, began) in list(running.items()):
            if proc.poll() is not None or time.time() > deadline:
                if proc.poll() is None:
                    proc.kill()
                results[name] = {"exit": proc.wait(), "seconds": time.time() - began,
                                 **collect(args.out / name)}
                del running[name]
                print(f"{name}: exit {results[name]['exit']} after {results[name]['seconds']:.0f} s",
                      flush=True)
                (args.out / "results.json").write_text(json.dumps(results, indent=1))
        time.sleep(1)
    lines = ["| run | epochs | val acc | with TTA | best | wall s |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        s = r.get("summary", {})
        tta = f"{s['val_acc_tta']:.4f}" if "val_acc_tta" in s else ""
        lines.append(f"| {name} | {s.get('epochs', len(r.get('val_acc', [])))} | "
                     f"{s.get('val_acc', float('nan')):.4f} | {tta} | "
                     f"{s.get('best_val_acc', float('nan')):.4f} | {r['seconds']:.0f} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"all jobs: {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
