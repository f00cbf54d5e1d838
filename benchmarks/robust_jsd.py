"""Prototype: AugMix's Jensen-Shannon consistency loss, trained outside the trainer.

AugMix (Hendrycks et al. 2020) trains on three views of each image, the image itself and two
independently mixed copies, with the cross-entropy of the clean view plus `lambda` (12 there)
times the Jensen-Shannon divergence between the three predicted distributions: the network is
told that a mixed image is the same picture. A step then costs three forward and backward passes.

This script is a stand-in until the trainer's step can take extra views (issue 24 leaves that to
the step refactor, issue 19): the same data, model, optimizer, schedule, alternating flips and
augmentations as `cifarlab train`, a plain loop, then the val accuracy (with TTA as the recipe
sets) and the robustness measure on the same val images as `cifarlab robustness --quick`.

    CIFARLAB_THREADS=1 python benchmarks/robust_jsd.py --recipe fast_small --epochs 2 \\
        --set augment.augmix=true --lam 12 --data ../shared/data/cifar10-train-jpeg.tgz --out OUT

Writes OUT/summary.json and OUT/robustness/ (robustness.json, .csv, .png).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cifarlab import distributed, fsio, optim
from cifarlab.augment import augment_batch, families_of, flip_where, mix_chains
from cifarlab.config import apply, make_config, parse_sets
from cifarlab.evaluate import evaluate_split, to_batch
from cifarlab.robustness import PRESETS, measure, take
from cifarlab.trainer import available_cores, build_model, load_data, seed_for


def jensen_shannon(logits: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the views of KL(p_view || p_mean): AugMix's consistency term (batch mean)."""
    probs = [F.softmax(z.float(), dim=1) for z in logits]
    log_mean = torch.clamp(sum(probs) / len(probs), 1e-7, 1).log()  # type: ignore[arg-type]
    return sum(F.kl_div(log_mean, p, reduction="batchmean") for p in probs) / len(probs)  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--recipe", default="fast_small")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--lam", type=float, default=12.0, help="weight of the JSD term")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--full", action="store_true", help="the full robustness measure")
    parser.add_argument("--images", type=int, help="measure on this many val images (a smoke test)")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(available_cores())
    config = make_config(args.recipe, epochs=args.epochs, seed=args.seed, data=args.data)
    config = apply(config, parse_sets(args.sets))
    device = torch.device("cpu")
    data = load_data(config, distributed.from_env(), device, quiet=True)
    model = build_model(config, data, device)
    optimizer = optim.build(config, model)
    base_aug = dataclasses.replace(config.augment, augmix=False, prime=False)
    a = config.augment
    images_all = torch.from_numpy(data.train.images)
    labels_all = torch.from_numpy(data.train.labels)
    parity = torch.randint(0, 2, (len(images_all),),
                           generator=torch.Generator().manual_seed(seed_for(config.seed, 3)))
    n, batch = len(images_all), config.batch_size
    steps = -(-n // batch)
    history = []
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(config.seed, epoch)))
        model.train()
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        for step in range(steps):
            idx = order[step * batch:(step + 1) * batch]
            if len(idx) < 2:
                continue
            x = to_batch(images_all[idx], device)
            y = labels_all[idx]
            if config.alternate_flip:
                x = flip_where(x, (parity[idx] + epoch) % 2 == 1)
            gen = torch.Generator().manual_seed(seed_for(config.seed, epoch, step, 1))
            if base_aug.active:
                x = augment_batch(base_aug, x, gen)
            views = [x] + [mix_chains(x, gen, families_of(a), a.mix_width, a.mix_depth,
                                      a.mix_severity, a.mix_share) for _ in range(2)]
            torch.manual_seed(seed_for(config.seed, epoch, step, 2))
            optim.set_lr(optimizer, optim.lr_at(config, (epoch * steps + step) / (config.epochs * steps)),
                         epoch)
            logits = model(torch.cat(views)).split(len(x))
            loss = F.cross_entropy(logits[0].float(), y, label_smoothing=config.label_smoothing)
            loss = loss + args.lam * jensen_shannon(list(logits))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(x)
            seen += len(x)
        val = evaluate_split(model, data.val, device)["accuracy"]
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "val_acc": val,
                        "seconds": time.perf_counter() - t0})
        print(json.dumps(history[-1]), flush=True)
    summary = {"recipe": config.recipe, "config": config.to_dict(), "lam": args.lam,
               "epochs": config.epochs, "val_acc": history[-1]["val_acc"], "history": history}
    if config.tta:
        summary["val_acc_tta"] = evaluate_split(model, data.val, device, tta=True,
                                                tta_fraction=config.tta_fraction)["accuracy"]
    preset = PRESETS["full" if args.full else "quick"]
    images, labels = take(data.val.images, data.val.labels, args.images or preset.images)
    model.eval()
    result = measure(model, images, labels, device, severities=preset.severities, quiet=True)
    result.write(args.out / "robustness", title=f"{config.recipe} + JSD {args.lam:g}")
    summary["robustness"] = {"clean": result.clean_acc, "corrupted": result.mean_acc,
                             **result.group_means}
    summary["wall_seconds"] = time.perf_counter() - started
    fsio.write_json(args.out / "summary.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "history")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
