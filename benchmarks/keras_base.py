"""The classic Keras tutorial's base CNN in Keras against cifarlab's `base`, epoch for epoch, in one run.

The two trainers alternate: cifarlab trains an epoch, then Keras trains one, and so on, so that
both see the same state of a shared, noisy machine (the same epoch can take 41 s or 90 s here).
Both train on the same 45,000 images of the real data and are judged on the same 5,000 held-out
ones (cifarlab's split, `--val-fraction 0.1`); the tutorial's settings on both sides: Adam 1e-3,
batch 64, 3 x [Conv3x3 + ReLU + MaxPool] with 32/64/128 filters, Flatten, Dense 10.

TensorFlow is not a cifarlab dependency, so Keras runs in a worker process from its own
environment, which this script drives over a pipe:

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu
    .venv/bin/python benchmarks/keras_base.py --tf-python /tmp/tfvenv/bin/python

Prints one row per epoch pair (cifarlab's step loop, `train_seconds`, against Keras' `fit` of one
epoch, no validation in either), the median of each and of the per-pair speed-up, and both final
val accuracies. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-train-jpeg.tgz"


def keras_worker(arrays: str) -> None:
    """Answer 'epoch' with the seconds of one `fit` epoch and 'eval' with the val accuracy."""
    import numpy as np
    import tensorflow as tf  # type: ignore[import-not-found]

    threads = os.environ.get("CIFARLAB_THREADS", "")
    if threads.isdigit() and int(threads) > 0:  # the thread count cifarlab's side uses too
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))

    with np.load(arrays) as data:  # scaled to 0..1 as the Keras tutorial did
        x, y = data["x_train"].astype("float32") / 255, data["y_train"]
        x_val, y_val = data["x_val"].astype("float32") / 255, data["y_val"]
    layers = tf.keras.layers
    model = tf.keras.Sequential([
        tf.keras.Input((32, 32, 3)),
        layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(128, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(10),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), metrics=["accuracy"],
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    print(json.dumps({"version": tf.__version__}), flush=True)
    for line in sys.stdin:
        if line.strip() == "epoch":
            start = time.perf_counter()
            model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=True)
            print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
        elif line.strip() == "eval":
            _, accuracy = model.evaluate(x_val, y_val, batch_size=256, verbose=0)
            print(json.dumps({"val_acc": accuracy}), flush=True)


class Keras:
    """The Keras worker, one request at a time."""

    def __init__(self, python: str, arrays: str) -> None:
        self.process = subprocess.Popen([python, __file__, "--worker", arrays], text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.version = self._read()["version"]

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"the Keras worker stopped (exit code {self.process.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def ask(self, request: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(request + "\n")
        self.process.stdin.flush()
        return self._read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data", default=str(DATA), help="(default: the shared JPEG split)")
    parser.add_argument("--epochs", type=int, default=15, help="(default: 15, the Keras tutorial's)")
    parser.add_argument("--tf-python", default="/tmp/tfvenv/bin/python",
                        help="a Python with tensorflow (default: /tmp/tfvenv/bin/python); with "
                        "CIFARLAB_THREADS=N both sides use N threads")
    parser.add_argument("--recipe", default="base", help="(default: base)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return keras_worker(args.worker)

    import numpy as np

    import cifarlab as cl
    from cifarlab.data import make_splits

    config = cl.make_config(args.recipe, data=args.data, epochs=args.epochs)
    splits = make_splits(cl.load_data(args.data, quiet=True), config.val_fraction, config.split_seed)
    with tempfile.TemporaryDirectory() as tmp:
        arrays = str(Path(tmp) / "split.npz")
        np.savez(arrays, x_train=splits["train"].images, y_train=splits["train"].labels,
                 x_val=splits["val"].images, y_val=splits["val"].labels)
        keras = Keras(args.tf_python, arrays)
        pairs: list[tuple[float, float]] = []

        def after_epoch(run: Any, metrics: dict[str, Any]) -> None:
            pairs.append((metrics["train_seconds"], keras.ask("epoch")["seconds"]))
            ours, theirs = pairs[-1]
            print(f"{len(pairs):>5} {ours:>12.1f} {theirs:>10.1f} {theirs / ours:>9.2f}x", flush=True)

        import torch

        print(f"cifarlab {cl.__version__} (torch {torch.__version__}, {torch.get_num_threads()} "
              f"threads) against Keras {keras.version}; {len(splits['train'].labels)} train, "
              f"{len(splits['val'].labels)} val images, alternating epochs")
        print(f"{'epoch':>5} {'cifarlab s':>12} {'Keras s':>10} {'speed-up':>10}")
        run = cl.train(args.recipe, data=args.data, epochs=args.epochs, quiet=True,
                       out=str(Path(tmp) / "run"), callbacks=[after_epoch])
        keras_acc = keras.ask("eval")["val_acc"]
        ours_acc = run.history[-1]["val_acc"]
    ours_s = [p[0] for p in pairs]
    theirs_s = [p[1] for p in pairs]
    print(f"median s/epoch: cifarlab {statistics.median(ours_s):.1f}, Keras "
          f"{statistics.median(theirs_s):.1f}; median speed-up of the pairs "
          f"{statistics.median(t / o for o, t in pairs):.2f}x")
    print(f"val accuracy after {args.epochs} epochs: cifarlab {ours_acc:.4f}, Keras {keras_acc:.4f}")


if __name__ == "__main__":
    main()
