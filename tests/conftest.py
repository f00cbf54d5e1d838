"""Shared fixtures: small data sets written in every supported format, and a private cache.

Tests never download and never touch the user's cache: XDG_CACHE_HOME points into tmp_path.
"""

from __future__ import annotations

import contextlib
import csv
import io
import pickle
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cifarlab.api import make_config
from cifarlab.callbacks import Callback
from cifarlab.trainer import train

SHARED_ARCHIVE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-train-jpeg.tgz"
CLASSES = [f"class{i}" for i in range(10)]


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Session- and module-scoped fixtures load data too: keep them off ~/.cache as well, and
    on one thread (tiny models: threads only add overhead, and CI's 2 cores run other work)."""
    cache = tmp_path_factory.mktemp("xdg-cache-session")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        patch.setenv("CIFARLAB_THREADS", "1")
        patch.delenv("CIFARLAB_DATA", raising=False)
        yield cache


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("CIFARLAB_DATA", raising=False)
    return cache


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test trains on one thread, and leaves torch's thread count as it found it."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("CIFARLAB_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def class_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Learnable toy images: each class has its own mean colour, plus noise. (N, 32, 32, 3) uint8."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 226, size=(10, 3))
    noise = rng.normal(0, 25, size=(len(labels), 32, 32, 3))
    return np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_official_dir(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """A tiny cifar-10-batches-py folder in the official pickle format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for i, name in enumerate(names):
        labels = rng.integers(0, 10, per_batch)
        images = class_images(labels, seed + i)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(),
                 b"data": images.transpose(0, 3, 1, 2).reshape(per_batch, -1),
                 b"filenames": [f"{name}_{j}.png".encode() for j in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_tar(source: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=source.name)
    return archive


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image_folder(root: Path, classes: list[str], n_train: int, n_test: int = 0,
                       size: int = 32, seed: int = 0) -> Path:
    """ROOT/train/<class>/NNNN.png (and ROOT/test/...) with learnable toy images."""
    for split, n in (("train", n_train), ("test", n_test)):
        if n == 0:
            continue
        for label, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True)
            images = class_images(np.full(n, label), seed + label + (100 if split == "test" else 0))
            for i, image in enumerate(images):
                if size != 32:
                    image = np.asarray(Image.fromarray(image).resize((size, size)))
                (folder / f"{i:04d}.png").write_bytes(png_bytes(image))
    return root


@pytest.fixture
def official_dir(tmp_path: Path) -> Path:
    return write_official_dir(tmp_path / "official")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "folder", ["cat", "dog", "frog"], n_train=30, n_test=5)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable 4-class image folder (120 train images per class) for training tests."""
    root = tmp_path_factory.mktemp("toy")
    return write_image_folder(root / "toy", ["a", "b", "c", "d"], n_train=120, n_test=20)


@pytest.fixture(scope="session")
def shared_archive() -> Path:
    if not SHARED_ARCHIVE.exists():
        pytest.skip(f"the shared CIFAR-10 archive is not at {SHARED_ARCHIVE}")
    return SHARED_ARCHIVE.resolve()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# Closed network, running as root: no sandbox, nothing in the background that phones home.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's headless Chromium driven by selenium (scripts/install-browser.sh installs both).
    Skipped, with the reason, where no Chromium is installed; a Chromium without its driver is
    a broken install, and fails."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH; install it with: sh scripts/install-browser.sh")
    if CHROMEDRIVER is None:
        pytest.fail("chromium is installed but chromedriver is not: sh scripts/install-browser.sh")
    from selenium import webdriver  # a dev dependency; imported here so a skip needs no selenium
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which would go to the network) is never started.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def live_server(app: Any, http: str = "auto", limits: Any = None) -> Iterator[str]:
    """Run `app` under uvicorn as `cifarlab serve` does (serve.uvicorn_config), in a thread on a
    free loopback port; yields its base URL. Needs the serve packages."""
    import uvicorn

    from cifarlab.serve import Limits, listen, uvicorn_config

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, limits or Limits(), http))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------------------------------------
# Builders that several test modules share (tests never import each other).

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]
TRAIN_PER_CLASS, HELD_OUT_PER_CLASS = 50, 10


def tiny_config(data: Path, recipe: str = "base", **overrides: Any) -> Any:
    """A small, fast run of `recipe` on toy data: 2 epochs of batch 32, 20% validation."""
    settings = {"epochs": 2, "batch_size": 32, "val_fraction": 0.2, "seed": 1, "device": "cpu"}
    settings.update(overrides)
    return make_config(recipe, data=str(data), **settings)


def read_metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


class InterruptAfter(Callback):
    """A Ctrl-C that arrives after `steps` training steps (the public trainer.interrupt())."""

    def __init__(self, steps: int):
        self.steps, self.seen = steps, 0

    def on_step_end(self, trainer: Any, step: dict[str, float]) -> None:
        self.seen += 1
        if self.seen >= self.steps:
            trainer.interrupt()


def make_dataset(root: Path, train_per_class: int = 16, test_per_class: int = 5) -> Path:
    """ROOT/{train,test}/<class>/*.png: each class a colour plus strong noise (learnable, not trivially)."""
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 216, (len(CIFAR_CLASSES), 3))
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for k, name in enumerate(CIFAR_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = palette[k] + rng.normal(0, 70, (32, 32, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def make_run(root: Path) -> Path:
    """Train the base recipe for 2 epochs on synthetic data, with the decoded cache under `root`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "xdg-cache"))
        config = make_config("base", data=str(make_dataset(root / "data")), epochs=2, val_fraction=0.25,
                             device="cpu")
        train(config, out=root / "run", quiet=True)
    return root / "run"


def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN with model.pt, `base` trained 1 epoch on toy images of CLASSES;
    RUN/../held-out/<class>/*.jpg are toy images it never saw (JPEG, as users upload photos).

    Built once per session (in the session's base temp folder) and shared by every test module.
    """
    root = tmp_path_factory.getbasetemp() / "tiny-run"
    run = root / "run"
    if (run / "model.pt").exists():
        return run
    data = write_image_folder(root / "data", CLASSES, n_train=TRAIN_PER_CLASS)
    for label, cls in enumerate(CLASSES):
        folder = root / "held-out" / cls
        folder.mkdir(parents=True)
        for i, image in enumerate(class_images(np.full(HELD_OUT_PER_CLASS, label), seed=7 + label)):
            (folder / f"{i:04d}.jpg").write_bytes(png_bytes(image, "JPEG"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        train(make_config("base", data=str(data), epochs=1, val_fraction=0.2), out=run, quiet=True)
    return run


def held_out_files(run: Path) -> list[Path]:
    return sorted((run.parent / "held-out").rglob("*.*"))


def copy_run(run: Path, to: Path) -> Path:
    """A private copy of the run (just model.pt), for tests that add a report folder."""
    to.mkdir(parents=True)
    shutil.copy(run / "model.pt", to / "model.pt")
    return to
