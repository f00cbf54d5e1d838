"""BatchNorm statistics for corrupted images: as trained, or estimated again after training.

A network with BatchNorm normalises with running statistics gathered during training. `fast`'s
BatchNorm has momentum 0.4, so its statistics are those of the last few training batches, and with
AugMix / PRIME those batches are mostly mixed images. This script re-estimates them after
training, as the plain average over `--batches` batches of training images, either clean (only
the recipe's flip and shift) or with the run's own augmentation, and measures each version on the
same corrupted validation images (cifarlab.robustness.measure_many):

    CIFARLAB_THREADS=1 python benchmarks/robust_bn.py RUN [RUN ...] --quick --batches 40

Prints one line per run and version: clean accuracy, mean corrupted accuracy and the group means.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys

import torch
from torch import nn

from cifarlab.augment import augment_batch
from cifarlab.checkpoint import load_model
from cifarlab.config import TrainConfig
from cifarlab.data import load_dataset, make_splits
from cifarlab.robustness import PRESETS, measure_many, take
from cifarlab.runtime import available_cores, seed_for, to_batch


def reestimate(model: nn.Module, images: torch.Tensor, config: TrainConfig, augmented: bool,
               batches: int) -> nn.Module:
    """A copy of `model` whose BatchNorm statistics are the average over `batches` batches."""
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain cumulative average
    settings = config.augment if augmented else dataclasses.replace(
        config.augment, augmix=False, prime=False)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    model.train()
    with torch.no_grad():
        for b in range(batches):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            x = to_batch(images[idx], torch.device("cpu"))
            if settings.active:
                x = augment_batch(settings, x, torch.Generator().manual_seed(seed_for(9, b)))
            model(x)
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--quick", action="store_true", help="1,000 images, severities 1, 3, 5")
    parser.add_argument("--batches", type=int, default=40, help="training batches per estimate")
    args = parser.parse_args()
    torch.set_num_threads(available_cores())
    for run in args.runs:
        model, record = load_model(run)
        config = TrainConfig.from_dict(record["config"])
        splits = make_splits(load_dataset(config.data, quiet=True), config.val_fraction,
                             config.split_seed)
        train = torch.from_numpy(splits["train"].images)
        preset = PRESETS["quick" if args.quick else "full"]
        images, labels = take(splits["val"].images, splits["val"].labels, preset.images)
        models = {"as trained": model,
                  "clean stats": reestimate(model, train, config, False, args.batches),
                  "augmented stats": reestimate(model, train, config, True, args.batches)}
        results = measure_many(models, images, labels, torch.device("cpu"),
                               severities=preset.severities, quiet=True)
        for name, result in results.items():
            print(json.dumps({"run": run, "bn": name, "clean": round(result.clean_acc, 4),
                              "corrupted": round(result.mean_acc, 4),
                              **{g: round(v, 4) for g, v in result.group_means.items()}}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
