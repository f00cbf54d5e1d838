"""Does the "robust" recipe hold up better under corruption? base vs robust vs bn vs fast.

Trains each recipe for the same number of epochs on the same data, then measures all of them on
the same validation images under the 15 CIFAR-10-C corruptions at 5 severities (each corrupted
copy made once and shown to every model), and writes:

    OUT/robustness.md              the summary table, per-corruption accuracies, times
    OUT/robustness_comparison.png  mean accuracy per corruption, one bar per recipe
    OUT/robustness_summary.json    every number above, with the settings
    OUT/<recipe>/                  the run (model.pt, metrics.csv, ...) and its robustness/ files

A run already in OUT/<recipe> (it has a model.pt) is reused, not trained again. On a GPU:

    python benchmarks/robustness_experiment.py --data /path/to/cifar10 --out runs/robustness \\
        --epochs 15 --device cuda

A CPU smoke test (minutes; the numbers mean nothing):

    CIFARLAB_THREADS=1 python benchmarks/robustness_experiment.py --data cifar10-train-jpeg.tgz \\
        --out /tmp/rx --epochs 1 --subset 500 --images 500 --quick
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarlab import fsio, plots
from cifarlab.api import make_config
from cifarlab.checkpoint import load_model
from cifarlab.corruptions import CORRUPTIONS, SEVERITIES
from cifarlab.data import load_dataset, make_splits
from cifarlab.errors import UserError
from cifarlab.robustness import PRESETS, Robustness, comparison_figure, markdown_table, measure_many, take
from cifarlab.rundir import FINAL as MODEL_FILE
from cifarlab.runtime import available_cores, pick_device
from cifarlab.trainer import train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data", required=True, help="the CIFAR-10 source (archive, folder, ...)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the runs and results")
    parser.add_argument("--recipes", default="base,robust,bn,fast", help="comma-separated recipes")
    parser.add_argument("--epochs", type=int, default=15, help="the same for every recipe")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--subset", type=int, help="train on a seeded N of the training images")
    parser.add_argument("--images", type=int, help="measure on a seeded N of the validation images "
                        "(default: all, 5,000 for CIFAR-10)")
    parser.add_argument("--quick", action="store_true", help="severities 1, 3, 5 only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions")
    parser.add_argument("--verbose", action="store_true", help="print each training epoch")
    return parser.parse_args()


def train_or_reuse(recipe: str, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The run's summary: trained now, or read from a finished run in `run_dir`."""
    if (run_dir / MODEL_FILE).is_file():
        print(f"  reusing the finished run in {run_dir}", flush=True)
        _, record = load_model(run_dir, weights="final")
        return dict(record.get("metrics", {}))
    config = make_config(recipe, epochs=args.epochs, data=str(args.data), device=args.device,
                         subset=args.subset)
    return train(config, out=run_dir, quiet=not args.verbose)[1]


def per_corruption_table(results: list[tuple[str, Robustness]]) -> str:
    header = "| corruption | " + " | ".join(label for label, _ in results) + " |"
    lines = [header, "|---|" + "---|" * len(results)]
    for name in CORRUPTIONS:
        cells = [f"{r.corruption_means[name]:.1%}" if name in r.table else "" for _, r in results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    torch.set_num_threads(available_cores())
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    device = pick_device(args.device)
    severities = PRESETS["quick"].severities if args.quick else SEVERITIES
    fsio.make_dir(args.out)
    epochs = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
    print(f"robustness experiment: {', '.join(recipes)}; {epochs} each on {device}; "
          f"results in {args.out}", flush=True)

    summaries: dict[str, dict[str, Any]] = {}
    for i, recipe in enumerate(recipes, 1):
        print(f"[{i}/{len(recipes)}] training {recipe} ...", flush=True)
        summaries[recipe] = train_or_reuse(recipe, args, args.out / recipe)
        s = summaries[recipe]
        print(f"  val acc {s.get('val_acc', float('nan')):.4f}, "
              f"{s.get('wall_seconds', s.get('total_seconds', 0.0)):.0f} s", flush=True)

    # Every run validates on the same images: the split depends only on val_fraction and
    # split_seed, which no recipe changes (checked here, not assumed).
    models, configs = {}, {}
    for recipe in recipes:
        model, record = load_model(args.out / recipe)
        models[recipe] = model.to(device)
        configs[recipe] = record["config"]
    keys = {(c["val_fraction"], c["split_seed"], c["data"]) for c in configs.values()}
    if len(keys) != 1:
        raise UserError(f"the runs validate on different images: {sorted(keys)}")
    val_fraction, split_seed, data = keys.pop()
    val = make_splits(load_dataset(data, quiet=True), val_fraction, split_seed)["val"]
    images, labels = take(val.images, val.labels, args.images, seed=args.seed)
    print(f"measuring {len(recipes)} models on {len(images)} validation images x "
          f"{len(CORRUPTIONS)} corruptions x {len(severities)} severities ...", flush=True)
    measured = measure_many(models, images, labels, device, severities=severities, seed=args.seed)
    results = [(recipe, measured[recipe]) for recipe in recipes]
    for recipe, result in results:
        result.write(args.out / recipe / "robustness", title=f"{recipe}: accuracy (%) under corruption")
        print(f"  {recipe:<8} clean {result.clean_acc:.1%}  corrupted {result.mean_acc:.1%}  "
              f"relative drop {result.relative_drop:.1%}", flush=True)

    total = time.perf_counter() - started
    figure = comparison_figure(results, title=f"Accuracy under corruption, {epochs} each "
                                              f"({len(images):,} validation images)")
    fsio.write_bytes(args.out / "robustness_comparison.png", plots.to_png(figure))
    train_times = {r: s.get("wall_seconds", s.get("total_seconds")) for r, s in summaries.items()}
    fsio.write_text(args.out / "robustness.md", "\n".join([
        f"# Robustness: {' vs '.join(recipes)}\n",
        f"{epochs} each on {device}; measured on {len(images):,} validation images "
        f"(val_fraction {val_fraction}, split_seed {split_seed}) under the 15 CIFAR-10-C corruptions "
        f"at severities {', '.join(map(str, severities))} (corruption seed {args.seed}). Clean "
        "accuracy is without test-time augmentation, for every recipe. Frost is a procedural "
        "substitute for the benchmark's photographs (see cifarlab/corruptions.py).\n",
        markdown_table(results),
        "Mean accuracy over the severities, per corruption:\n",
        per_corruption_table(results),
        "Training seconds: " + ", ".join(f"{r} {t:.0f}" for r, t in train_times.items() if t) +
        f"; measuring all: {results[0][1].seconds:.0f} s; total {total:.0f} s.\n",
        "![accuracy per corruption](robustness_comparison.png)\n",
    ]))
    fsio.write_json(args.out / "robustness_summary.json", {
        "recipes": recipes, "epochs": args.epochs, "device": str(device), "subset": args.subset,
        "n_images": len(images), "severities": list(severities), "seed": args.seed,
        "val_fraction": val_fraction, "split_seed": split_seed, "data": data,
        "train": summaries, "robustness": {r: res.to_json() for r, res in results},
        "seconds": round(total, 1), "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__,
    })
    print(f"wrote {args.out / 'robustness.md'}, robustness_comparison.png, robustness_summary.json "
          f"and {len(recipes)} runs; total {total / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"robustness_experiment: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
