"""Shared fixtures: small data sets written in every supported format, and a private cache.

Tests never download and never touch the user's cache: XDG_CACHE_HOME points into tmp_path.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import os
import pickle
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
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


# CIFAR-100's label names, in the order of its meta file.
CIFAR100_FINE = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm"
]
CIFAR100_COARSE = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2"
]


def cifar100_batch(fine: np.ndarray, seed: int = 0) -> dict[bytes, Any]:
    """One CIFAR-100 pickle's dict for these fine labels: toy images, each fine class its own mean
    colour (so the 5 fine classes of a coarse one, fine // 5 here, are told apart too)."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(100).integers(20, 236, size=(100, 3))
    noise = rng.normal(0, 20, size=(len(fine), 32, 32, 3))
    images = np.clip(palette[fine][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return {b"filenames": [f"image_{i}.png".encode() for i in range(len(fine))],
            b"batch_label": b"toy", b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"data": images.transpose(0, 3, 1, 2).reshape(len(fine), -1)}


def write_cifar100_dir(root: Path, train_per_class: int = 3, test_per_class: int = 1,
                       seed: int = 0) -> Path:
    """A tiny cifar-100-python folder in the official format: meta, train and test pickles (as
    Python 3 writes protocol 2: bytes through _codecs.encode), every class in every split."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, (split, per_class) in enumerate((("train", train_per_class), ("test", test_per_class))):
        fine = rng.permutation(np.repeat(np.arange(100), per_class))
        (folder / split).write_bytes(pickle.dumps(cifar100_batch(fine, seed + i), protocol=2))
    meta = {b"fine_label_names": [n.encode() for n in CIFAR100_FINE],
            b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


@pytest.fixture(scope="session")
def cifar100_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny cifar-100-python.tar.gz: 3 train and 1 test image of each of the 100 classes."""
    root = tmp_path_factory.mktemp("cifar100")
    return write_tar(write_cifar100_dir(root / "src"), root / "cifar-100-python.tar.gz")


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


def cifar100_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN: `base` trained 1 epoch on a tiny official-format cifar-100-python.tar.gz (fine labels:
    200 train images, 100 val, 100 test, one of each class), the 100-class path of every command.
    Built once per session, in the session's base temp folder, for every module that needs it."""
    root = tmp_path_factory.getbasetemp() / "cifar100-run"
    run = root / "run"
    if (run / "model.pt").exists():
        return run
    archive = write_tar(write_cifar100_dir(root / "data"), root / "cifar-100-python.tar.gz")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        train(make_config("base", data=str(archive), epochs=1, val_fraction=0.34, batch_size=32),
              out=run, quiet=True)
    return run


def held_out_files(run: Path) -> list[Path]:
    return sorted((run.parent / "held-out").rglob("*.*"))


def copy_run(run: Path, to: Path) -> Path:
    """A private copy of the run (just model.pt), for tests that add a report folder."""
    to.mkdir(parents=True)
    shutil.copy(run / "model.pt", to / "model.pt")
    return to


# ---------------------------------------------------------------------------------------------
# A throwaway PostgreSQL server, for the tests of a study or a tracking store shared by machines.


def _pg_binary(name: str) -> str | None:
    """initdb and pg_ctl: on PATH, else where Debian keeps them (/usr/lib/postgresql/N/bin)."""
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                  reverse=True)), None)


class PostgresServer:
    """A PostgreSQL server on a Unix socket in a private temp folder, with a role `lab` (no
    password: trust authentication, nothing listens on the network). `database()` makes a fresh
    database and returns its SQLAlchemy URL."""

    def __init__(self, folder: Path, as_user: list[str]):
        self.folder, self.as_user = folder, as_user
        self.data, self.port = folder / "data", 5432

    def run(self, *argv: str) -> None:
        done = subprocess.run([*self.as_user, *argv], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log = self.folder / "server.log"
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip()}"
                               + (f"\n{log.read_text()}" if log.exists() else ""))

    def start(self) -> None:
        self.run(_pg_binary("initdb") or "initdb", "-D", str(self.data), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
        options = (f"-k {self.folder} -p {self.port} -c listen_addresses='' -F "
                   "-c max_connections=40 -c shared_buffers=16MB")
        self.run(_pg_binary("pg_ctl") or "pg_ctl", "-D", str(self.data), "-l",
                 str(self.folder / "server.log"), "-w", "-t", "60", "-o", options, "start")
        self.execute("CREATE ROLE lab LOGIN")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run(_pg_binary("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", "immediate",
                     "-w", "stop")

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.folder), port=self.port, user="postgres",
                             dbname="postgres", autocommit=True) as connection:
            connection.execute(sql)  # type: ignore[arg-type]

    def database(self, owner: str = "lab") -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.execute(f"CREATE DATABASE {name} OWNER {owner}")
        return self.url(name)

    def url(self, database: str, user: str = "lab") -> str:
        return f"postgresql+psycopg://{user}@/{database}?host={self.folder}&port={self.port}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, from the machine's own binaries; skipped, with the
    reason, where they or the driver are absent. initdb refuses to run as root: as root, the
    server runs as the `postgres` user (Debian's package makes it)."""
    if _pg_binary("initdb") is None or _pg_binary("pg_ctl") is None:
        pytest.skip("PostgreSQL is not installed here (no initdb/pg_ctl on PATH or in "
                    "/usr/lib/postgresql/*/bin): apt-get install postgresql")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed: "
                                          "pip install 'cifarlab[postgres]'")
    as_user: list[str] = []
    # A short path: a Unix socket's name must fit in 107 bytes; and one the server's user may enter.
    folder = Path(tempfile.mkdtemp(prefix="cl-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip("running as root, and there is no 'postgres' user to run initdb as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = (["runuser", "-u", "postgres", "--"] if shutil.which("runuser")
                   else ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                         "--init-groups", "--"])
    server = PostgresServer(folder, as_user)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL server, owned by `lab`: its URL."""
    return postgres_server.database()


# ---------------------------------------------------------------------------------------------
# A local MLflow tracking store (SQLite), made once: creating its tables takes MLflow seconds.


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI of a SQLite MLflow store for the session; tests keep apart by experiment name. In
    memory (/dev/shm) where there is one: MLflow makes its tables in ~40 fsync'ed steps, 14 s on
    this disk under load, 4 s in memory."""
    pytest.importorskip("mlflow", reason="MLflow is not installed: pip install 'cifarlab[mlflow]'")
    from mlflow.tracking import MlflowClient

    memory = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="cl-mlflow-", dir=memory if memory.is_dir() else None))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        # MLflow keeps one store per URI, whose artifacts go to ./mlruns of the folder it was
        # first opened in: here, never the repository.
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(folder)
            MlflowClient(uri).search_experiments()  # creates the tables
        yield uri
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def mlflow_experiment(mlflow_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh experiment in the session's store ($MLFLOW_EXPERIMENT_NAME), run from tmp_path
    (a store opened here, such as PostgreSQL's, keeps its artifacts in ./mlruns)."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    monkeypatch.chdir(tmp_path)
    return name
