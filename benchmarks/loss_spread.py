"""How noisy is a val loss? The spread of the per-image cross-entropy behind diagnose.LOSS_SPREAD.

A val loss is the mean of one cross-entropy per val image, so its standard error is their standard
deviation / sqrt(images). The diagnosis needs that noise without the per-image values, which
metrics.csv does not keep: it takes the standard deviation as LOSS_SPREAD x the mean. This prints
the ratio for the best and the final weights of each run given, at temperature 1 (as the trainer
measures val loss, before calibration):

    .venv/bin/python benchmarks/loss_spread.py runs/base runs/robust
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from cifarlab.checkpoint import load_model
from cifarlab.evaluate import predict_logits
from cifarlab.report import evaluation_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    args = parser.parse_args()
    for path in args.runs:
        for weights in ("best", "final"):
            model, record = load_model(path, weights=weights)
            model.temperature.fill_(1.0)
            _, part = evaluation_split(record, None, "val", quiet=True)
            logits = predict_logits(model, part.images, torch.device("cpu"))
            labels = torch.as_tensor(part.labels)
            loss = F.cross_entropy(logits, labels, reduction="none")
            accuracy = (logits.argmax(1) == labels).float().mean()
            print(f"{path} {weights} weights (epoch {record.get('epoch')}): {len(loss):,} images, "
                  f"accuracy {accuracy:.3f}, cross-entropy mean {loss.mean():.4f}, sd "
                  f"{loss.std():.4f}, sd / mean {loss.std() / loss.mean():.2f}")


if __name__ == "__main__":
    main()
