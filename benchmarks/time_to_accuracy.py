"""Time to accuracy of a recipe on this machine (prints a markdown table).

Trains the recipe once per seed with `cifarlab train` in a fresh process (or reads finished runs
with --runs), then reports per run:

- seconds of training (cumulative `train_seconds` of metrics.csv: the step loop, without the
  per-epoch evaluation) until the val accuracy first reached 0.70 ... 0.93 ("-": never);
- the final val accuracy without and with test-time augmentation, and the wall time of the
  whole command (data loading, training, every evaluation, TTA, writing);
- training images/s (summary.json) and inference images/s (timed here on the val split);
- peak resident memory of the training process (summary.json);
- achieved training GFLOP/s: FLOPs of one training step counted with torch.utils.flop_counter
  (forward + backward, per image) times images/s, next to this machine's fp32 peak.

Accuracy is measured after each epoch, so a "time to 0.90" is the end of the first epoch at or
above 0.90. Run it with nothing else on the machine:

    .venv/bin/python benchmarks/time_to_accuracy.py --recipe fast --seeds 0 1 2
    .venv/bin/python benchmarks/time_to_accuracy.py --recipe fast --budget 15m
    .venv/bin/python benchmarks/time_to_accuracy.py --runs runs/fast-10      # finished runs
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cifarlab.checkpoint import load_model
from cifarlab.data import load_dataset, make_splits
from cifarlab.evaluate import predict_logits

THRESHOLDS = (0.70, 0.80, 0.85, 0.90, 0.92, 0.93)
PEAK_GFLOPS = 180.0  # fp32 matmul on these 2 cores (torch 2.13, 2 threads): DEVELOPERS.md


def train_flops_per_image(model: torch.nn.Module, batch: int = 64) -> float:
    """Forward + backward FLOPs of one training step, per image."""
    model = model.train()
    x = torch.rand(batch, 3, 32, 32) * 255
    y = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def inference_images_per_second(run: Path) -> float:
    model, record = load_model(run)
    config = record["config"]
    dataset = load_dataset(config["data"], quiet=True)
    val = make_splits(dataset, config["val_fraction"], config["split_seed"])["val"]
    predict_logits(model, val.images[:512], torch.device("cpu"))  # warm-up
    start = time.perf_counter()
    predict_logits(model, val.images, torch.device("cpu"))
    return len(val) / (time.perf_counter() - start)


def measure(run: Path) -> dict[str, Any]:
    summary = json.loads((run / "summary.json").read_text())
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    reached: dict[float, float | None] = dict.fromkeys(THRESHOLDS)
    seconds = 0.0
    for row in rows:
        seconds += float(row["train_seconds"])
        for t in THRESHOLDS:
            if reached[t] is None and row["val_acc"] and float(row["val_acc"]) >= t:  # "": skipped
                reached[t] = seconds
    model, _ = load_model(run)
    flops = train_flops_per_image(model)
    ips = float(summary["train_images_per_second"])
    return {"run": str(run), "epochs": summary["epochs"], "reached": reached,
            "val_acc": summary["val_acc"], "val_acc_tta": summary.get("val_acc_tta"),
            "wall_seconds": summary.get("wall_seconds"), "train_ips": ips,
            "infer_ips": inference_images_per_second(run),
            "peak_rss_mb": summary.get("peak_rss_mb"),
            "gflops": flops * ips / 1e9, "gflop_per_image": flops / 1e9}


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict[str, Any]], seeds: bool) -> None:
    head = ["run", "epochs", *(f"t({t:.2f})" for t in THRESHOLDS), "val", "val TTA", "wall s",
            "train img/s", "infer img/s", "peak RSS MB", f"GFLOP/s (peak {PEAK_GFLOPS:.0f})"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        cells = [Path(r["run"]).name, str(r["epochs"]),
                 *(fmt(r["reached"][t], ".0f") for t in THRESHOLDS),
                 fmt(r["val_acc"], ".4f"), fmt(r["val_acc_tta"], ".4f"),
                 fmt(r["wall_seconds"], ".0f"), fmt(r["train_ips"], ".0f"),
                 fmt(r["infer_ips"], ".0f"), fmt(r["peak_rss_mb"], ".0f"),
                 f"{r['gflops']:.0f} ({r['gflop_per_image']:.2f} GFLOP/img)"]
        print("| " + " | ".join(cells) + " |")
    if seeds and len(results) > 1:  # one recipe over several seeds
        for key in ("val_acc", "val_acc_tta", "wall_seconds"):
            values = [r[key] for r in results if r[key] is not None]
            if len(values) == len(results):
                print(f"{key}: {statistics.fmean(values):.4f} +- {statistics.stdev(values):.4f} "
                      f"over {len(values)} runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--data", default="../shared/data/cifar10-train-jpeg.tgz")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", help="passed to cifarlab train --budget")
    parser.add_argument("--epochs", type=int, help="passed to cifarlab train --epochs")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="where runs go")
    parser.add_argument("--runs", type=Path, nargs="+", help="measure these finished runs instead")
    args = parser.parse_args()
    torch.set_num_threads(2)
    runs = args.runs or []
    if not runs:
        for seed in args.seeds:
            label = f"{args.recipe}-{args.budget or args.epochs or 'default'}-seed{seed}"
            run = args.out / label
            command = [sys.executable, "-m", "cifarlab", "train", "--recipe", args.recipe,
                       "--data", args.data, "--seed", str(seed), "--out", str(run), "--quiet"]
            command += ["--budget", args.budget] if args.budget else []
            command += ["--epochs", str(args.epochs)] if args.epochs else []
            print("$", " ".join(command), file=sys.stderr, flush=True)
            subprocess.run(command, check=True)
            runs.append(run)
    print_table([measure(run) for run in runs], seeds=not args.runs)


if __name__ == "__main__":
    main()
