"""Crafted hostile inputs: one copy of each builder, for the tests and the long fuzzer.

The tests import it like conftest (`from crafted import ...`); benchmarks/fuzz_readers.py puts
tests/ on sys.path and imports it too. Builders only: no pytest, no hypothesis, no assertions, so
that both sides can use them, and each crafted input is written once.

    data files     Call, Built, object_dtype_pickles, zip_of, tar_of, gzipped, tar_header,
                   png_bomb, rezipped, checkpoint_blob
    settings       alias_bomb, deep_yaml, deep_json, ODD_SETTINGS, code_module (issue 22)
    search folders POINTERS, tamper_study
    run folders    write_run, ODD_RUN_FILES, big_metrics
    model files    MODEL_TAMPERS, CHECKPOINT_TAMPERS, tampered_copy
"""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "train_acc_clean", "val_loss", "val_acc",
                  "lr", "seconds", "train_seconds"]  # rundir.METRIC_COLUMNS (tested equal)

# ---------------------------------------------------------------------------------------------
# Data files: pickles, archives, images, model zips


class Call:
    """Pickles as `func(*args)`: how a hostile pickle asks for anything."""

    def __init__(self, func: Any, *args: Any):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def reconstruct() -> Any:
    """numpy's array constructor, as its pickles name it."""
    from numpy._core.multiarray import _reconstruct

    return _reconstruct


class Built:
    """Pickles as numpy does an array: `_reconstruct(ndarray, (0,), 'b')`, then BUILD with `state`."""

    def __init__(self, state: tuple[Any, ...]):
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return reconstruct(), (np.ndarray, (0,), b"b"), self.state


OBJECT_DTYPE_IDS = ["object-short-list", "object", "object-field", "subarray", "huge", "negative",
                    "not-a-dtype", "list-raw"]


def object_dtype_pickles() -> list[bytes]:
    """BUILDs that make numpy read Python objects, or more bytes than the pickle holds (a list
    one element short of the shape crashed the process before issue 12)."""
    states = [
        (1, (1,), np.dtype("O"), False, []),
        (1, (2,), np.dtype("O"), False, [None]),
        (1, (1,), np.dtype([("a", "O")]), False, b"\0" * 8),
        (1, (1,), np.dtype(("u1", (4,))), False, b"\0"),
        (1, (10**6, 3072), np.dtype("u1"), False, b"\0" * 16),
        (1, (-1,), np.dtype("u1"), False, b""),
        (1, (1,), "not a dtype", False, b"\0"),
        (1, (4,), np.dtype("u1"), False, [1, 2, 3, 4]),
    ]
    return [pickle.dumps({b"data": Built(state), b"labels": [0]}, 2) for state in states]


def zip_of(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_of(files: dict[str, bytes], mode: str = "w:gz",
           extra: Callable[[tarfile.TarFile], None] | None = None) -> bytes:
    """A tar (gzipped by default) of `files`; `extra(tar)` may add odd members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if extra:
            extra(archive)
    return buffer.getvalue()


def gzipped(parts: Iterable[bytes]) -> bytes:
    """A .gz of the concatenated parts, compressed as they come (no big buffer)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    return b"".join(packer.compress(part) for part in parts) + packer.flush()


def tar_header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(tarfile.GNU_FORMAT)


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels, with almost no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 99))
            + chunk(b"IEND", b""))


def rezipped(blob: bytes, replace: dict[str, tuple[bytes, int]], extra: int = 0) -> bytes:
    """The zip `blob` (a torch.save file) with some records replaced ({name: (data, method)},
    names without the archive's folder) and `extra` empty records added."""
    source, out = zipfile.ZipFile(io.BytesIO(blob)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in source.namelist():
            data, method = replace.get(name.split("/", 1)[1], (source.read(name), zipfile.ZIP_STORED))
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
        for i in range(extra):
            archive.writestr(f"archive/extra/{i}", b"")
    return out.getvalue()


def checkpoint_blob() -> bytes:
    """A small, valid-looking checkpoint.pt (a conv and a BatchNorm, Adam state, counters)."""
    import torch

    from cifarlab import checkpoint

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    buffer = io.BytesIO()
    torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": 1,
                "history": [dict.fromkeys(METRIC_COLUMNS, 1.0)], "config": {"epochs": 2},
                "classes": ["a", "b"], "best": {"epoch": 1, "value": 1.0},
                "epoch_state": {"step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0,
                                "seconds": 0.0}}, buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Settings files: config files, search spaces, best.yaml (issue 22)


def alias_bomb(levels: int = 9, width: int = 9, key: str = "model_kwargs") -> str:
    """A config of ~500 bytes whose `key` nests aliases `levels` deep: width^levels strings once
    anything walks it (--print-config ran 60 s and past 600 MB before issue 22)."""
    lines = [f"  a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"{key}:\n" + "\n".join(lines) + "\n"


def deep_yaml(depth: int = 20_000) -> str:
    """model_kwargs.x nested `depth` lists deep (a RecursionError traceback before issue 22)."""
    return "model_kwargs:\n  x: " + "[" * depth + "]" * depth + "\n"


def deep_json(depth: int = 20_000) -> str:
    return '{"model_kwargs": {"x": ' + "[" * depth + "]" * depth + "}}"


# name -> (file suffix, text): settings files that are valid YAML/JSON of the wrong kind
ODD_SETTINGS: dict[str, tuple[str, str]] = {
    "on-key": (".yaml", "on: true\nepochs: 2\n"),  # YAML 1.1: `on` is the key True
    "int-key": (".yaml", "1: 2\n"),
    "date": (".yaml", "data: 2024-01-01\n"),
    "binary": (".yaml", "data: !!binary aGVsbG8=\n"),
    "set": (".yaml", "model_kwargs: !!set {a, b}\n"),
    "huge-int": (".yaml", "epochs: 1" + "0" * 5000 + "\n"),
    "python-tag": (".yaml", "model: !!python/object/apply:os.system [echo pwned]\n"),
    "alias": (".yaml", "lr: &x 0.1\nmomentum: *x\n"),
    "bomb": (".yaml", alias_bomb()),
    "deep-yaml": (".yaml", deep_yaml()),
    "deep-json": (".json", deep_json()),
    "not-a-mapping": (".yaml", "- epochs\n- 2\n"),
    "nan": (".json", '{"lr": NaN}'),
    "null-bytes": (".yaml", "epochs: \0\n"),
}


def code_module(folder: Path, marker: Path, name: str = "netfile") -> str:
    """A model file that leaves `marker` when it is imported; returns its spec "FILE.py:Net".
    A crafted settings file or search folder names it: cifarlab must never import it unasked."""
    path = folder / f"{name}.py"
    path.write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        "from torch import nn\n\n\n"
        "class Net(nn.Sequential):\n"
        "    def __init__(self, num_classes=10):\n"
        "        super().__init__(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))\n")
    return f"{path}:Net"


# ---------------------------------------------------------------------------------------------
# Search folders


# name -> search.json's content ("{db}" is a path outside the folder, for the tests to fill in)
POINTERS: dict[str, Any] = {
    "sqlite-elsewhere": {"storage": "sqlite:///{db}", "study": "s", "spent_seconds": 0},
    "postgres": {"storage": "postgresql://cifarlab@attacker.example/db", "study": "s"},
    "no-study": {"storage": None, "spent_seconds": 0},
    "spent-text": {"storage": None, "study": "s", "spent_seconds": "soon"},
    "spent-nan": {"storage": None, "study": "s", "spent_seconds": math.nan},
    "storage-number": {"storage": 5, "study": "s"},
    "study-list": {"storage": None, "study": ["s"]},
    "not-a-mapping": [1, 2],
}


def tamper_study(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the stored settings of the study in `folder`'s own study.db with `edit(settings)`
    (Optuna's own API: what anyone holding the folder can do)."""
    import optuna

    pointer = json.loads((folder / "search.json").read_text())
    storage = optuna.storages.RDBStorage(f"sqlite:///{(folder / 'study.db').resolve()}")
    study = optuna.load_study(study_name=pointer["study"], storage=storage)
    settings = dict(study.user_attrs["cifarlab"])
    edit(settings)
    study.set_user_attr("cifarlab", settings)


# ---------------------------------------------------------------------------------------------
# Run folders, as compare and report read them


def write_run(path: Path, recipe: str = "base", model: str = "base",
              clean: Iterable[float | None] = (0.6, 0.7), val: Iterable[float | None] = (0.6, 0.65),
              seconds: float = 30.0, summary: dict[str, object] | None = None,
              val_loss: list[float] | None = None) -> Path:
    """A run directory as `cifarlab train` leaves it, minus the model files. A val of None is an
    empty cell, as a run with --val-fraction 0 (or an epoch without evaluation) writes it."""
    clean, val = list(clean), list(val)
    path.mkdir(parents=True)
    config = {"recipe": recipe, "model": model, "epochs": len(val), "seed": 0}
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    (path / "config.json").write_text(json.dumps({"config": config, "classes": list("abcdefghij"),
                                                  "train_images": 45000, "val_images": 5000}))
    losses = val_loss or [1.0] * len(val)
    with (path / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for i, (c, v) in enumerate(zip(clean, val, strict=True)):
            writer.writerow({"epoch": i + 1, "train_loss": 1.0, "train_acc": (c or 0.5) - 0.04,
                             "train_acc_clean": "" if c is None else c,
                             "val_loss": "" if v is None else losses[i], "val_acc": "" if v is None else v,
                             "lr": 1e-3, "seconds": seconds, "train_seconds": seconds - 2})
    return path


HEADER = ",".join(METRIC_COLUMNS) + "\n"
ROW = "{},0.9,0.6,0.7,0.8,{},0.001,1.5,1.2\n"  # epoch, val_acc


def big_metrics(size: int = 18 << 20) -> str:
    """metrics.csv of `size` bytes of the shortest rows: ~1 million epochs (compare held an 18 MB
    one as dicts at 33x its size before issue 22)."""
    rows, total, epoch = [HEADER], len(HEADER), 0
    while total < size:
        epoch += 1
        rows.append(f"{epoch},0,0,0,0,0,0,0,0\n")
        total += len(rows[-1])
    return "".join(rows)


# name -> {file in the run folder: text}: values compare and report read, of the wrong kind
ODD_RUN_FILES: dict[str, dict[str, str]] = {
    "nan-epoch": {"metrics.csv": HEADER + ROW.format(1, 0.5) + ROW.format("nan", 0.9)},
    "inf-epoch": {"metrics.csv": HEADER + ROW.format(1, 0.5) + ROW.format("inf", 0.9)},
    "text-cell": {"metrics.csv": HEADER + ROW.format(1, "high")},
    "short-row": {"metrics.csv": HEADER + "1,0.5\n"},
    "long-field": {"metrics.csv": HEADER + ROW.format(1, "1" * 200_000)},
    "nul-byte": {"metrics.csv": HEADER + ROW.format(1, "0.5\0")},
    "config-list": {"config.json": json.dumps({"config": [1, 2], "classes": ["a", "b"]})},
    "config-seed-list": {"config.json": json.dumps({"config": {"seed": [1]}, "classes": ["a"]})},
    "classes-numbers": {"config.json": json.dumps({"config": {}, "classes": [1, 2]})},
    "versions-list": {"config.json": json.dumps({"config": {}, "versions": ["torch"]})},
    "config-deep": {"config.json": deep_json()},
    "summary-text-tta": {"summary.json": json.dumps({"val_acc_tta": "high"})},
    "robustness-empty": {"robustness/robustness.json": json.dumps({
        "format": "cifarlab-robustness", "version": 1, "clean_acc": 0.5, "table": {},
        "severities": [1], "n_images": 10})},
    "robustness-unknown": {"robustness/robustness.json": json.dumps({
        "format": "cifarlab-robustness", "clean_acc": 0.5, "table": {"frobnicate": [0.5]},
        "severities": [1], "n_images": 10})},
    "robustness-text": {"robustness/robustness.json": json.dumps({
        "format": "cifarlab-robustness", "clean_acc": "0.5", "table": {"fog": [0.5]},
        "severities": [1], "n_images": 10})},
}


# ---------------------------------------------------------------------------------------------
# Model files and checkpoints: metadata of the wrong type or out of range


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit that sets the dotted `path` of a record to `value`."""
    def edit(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            record = record.setdefault(part, {})
        record[last] = value
    return edit


def _temperature(value: float) -> Callable[[dict[str, Any]], None]:
    def edit(record: dict[str, Any]) -> None:
        import torch

        record["state_dict"]["temperature"] = torch.tensor(value)
    return edit


MODEL_TAMPERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "config-list": _set("config", [1, 2]),
    "val-acc-text": _set("metrics.val_acc", "high"),
    "recipe-number": _set("config.recipe", 7),
    "metrics-list": _set("metrics", ["val_acc"]),
    "classes-numbers": _set("classes", [1, 2]),
    "classes-empty": _set("classes", []),
    "mean-short": _set("mean", [1.0]),
    "std-zero": _set("std", [0.0, 1.0, 1.0]),
    "kwargs-list": _set("model_kwargs", [1]),
    "epoch-text": _set("epoch", "last"),
    "weights-odd": _set("weights", "median"),
    "temperature-nan": _temperature(math.nan),
    "temperature-zero": _temperature(0.0),
    "temperature-negative": _temperature(-1.0),
    "temperature-inf": _temperature(math.inf),
}

CHECKPOINT_TAMPERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "best-text": _set("best.value", "high"),
    "best-epoch-later": _set("best.epoch", 99),
    "history-rows": lambda saved: saved.__setitem__("history", [{"epoch": 1}] * saved["epoch"]),
    "history-short": lambda saved: saved.__setitem__("history", saved["history"][:-1]),
    "step-huge": _set("epoch_state.step", 10**9),
    "step-negative": _set("epoch_state.step", -3),
    "seen-text": _set("epoch_state.seen", "many"),
    "epoch-negative": _set("epoch", -1),
}


def tampered_copy(run: Path, to: Path, file: str, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of run folder `run` at `to` whose `file` (model.pt, best.pt or checkpoint.pt) was
    loaded, edited and saved again, as anyone can do with torch."""
    import torch

    shutil.copytree(run, to)
    record = torch.load(to / file, weights_only=True)
    edit(record)
    torch.save(record, to / file)
    return to
