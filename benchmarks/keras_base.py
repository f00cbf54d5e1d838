"""The seed notebook's base CNN in Keras, timed per epoch: the reference for `base`'s speed.

Needs TensorFlow, which cifarlab does not depend on; use a separate environment:

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu
    /tmp/tfvenv/bin/python benchmarks/keras_base.py --epochs 2

Trains on 45,000 random 32x32 images (the speed of a fixed network does not depend on the
pixels) with the seed's settings: Adam 1e-3, batch 64, 3 x [Conv3x3 + ReLU + MaxPool] with
32/64/128 filters, Flatten, Dense 10. Prints seconds per epoch; compare with
`.venv/bin/python benchmarks/epoch_speed.py --recipes base` run right after it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf  # type: ignore[import-not-found]


class EpochTimer(tf.keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=45_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8).astype("float32") / 255
    y = rng.integers(0, 10, args.images)
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
    timer = EpochTimer()
    model.fit(x, y, batch_size=64, epochs=args.epochs, verbose=0, callbacks=[timer])
    print(f"keras {tf.__version__}, {os.cpu_count()} cores: seconds per epoch of {args.images} "
          f"images: {', '.join(f'{s:.1f}' for s in timer.seconds)} "
          f"(median {statistics.median(timer.seconds):.1f})")


if __name__ == "__main__":
    main()
