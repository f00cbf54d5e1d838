"""Fuzz every reader of files from outside with malformed input; print how many inputs were tried.

Every input must either load correctly or raise cifarlab's `UserError`. Any other exception, a hang
(more than --timeout seconds on one input) or a jump in peak memory (more than --max-mb) is a
finding: it is printed and the input saved under --out. The seeds are valid files of every kind
cifarlab reads (batch pickles, images in many modes and formats, .tgz/.tar/.zip image folders and
official sets, folders, checkpoints); each trial either mutates a seed (truncate, flip bits,
overwrite, insert, delete, splice) or builds a hostile input (random bytes, wrong shapes, dtypes and
labels, allocation bombs in pickles, object dtypes and short buffers, opcode floods, gzip/zip/PNG
bombs, tar meta-header bombs, nested and Windows-made zips, zip bombs in model files, symlink loops,
non-UTF-8 names, FIFOs, deep trees).

The targets of issue 22 read what comes with a folder from someone else: `settings` (config and
space files: YAML alias bombs, boolean and number keys, dates, tags, deep nesting, mutations of
real ones), `search` (search.json pointers and the settings stored in a study: other databases,
wrong types, keywords that are not settings, models named by import spec), `runfolder` (the
config.json, summary.json, metrics.csv and robustness.json that compare and report read) and
`modelmeta` (a model file's metadata with fields of any type, loaded as predict, export and serve
load it). A loaded settings file, study or pointer must never name a model to import or a
database outside its folder.

The crafted inputs are built by tests/crafted.py, which the tests use too (one copy of each).

The `socket` target (needs the serve packages) runs `cifarlab serve`'s app on a loopback port and
plays slow and broken clients at it: request heads cut anywhere, sent a few bytes at a time with
pauses, or never finished; bodies that trickle or lie about their length. After each one a normal
client must still get /health within a second, and idle connections must be closed in time.

    CIFARLAB_THREADS=1 .venv/bin/python benchmarks/fuzz_readers.py --seconds 120
    CIFARLAB_THREADS=1 .venv/bin/python benchmarks/fuzz_readers.py --targets image --seconds 30

Exit status 1 if anything was found.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import faulthandler
import gzip
import io
import json
import math
import os
import pickle
import random
import resource
import shutil
import signal
import socket
import sys
import tarfile
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cifarlab import checkpoint, sources
from cifarlab.data import load_dataset
from cifarlab.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import crafted  # tests/crafted.py: the crafted inputs, one copy shared with the tests
from crafted import Call, gzipped, png_bomb, rezipped, tar_header

TARGETS = ("batch", "image", "archive", "folder", "checkpoint", "socket", "settings", "search",
           "runfolder", "modelmeta")


class Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise Hang


# ---------------------------------------------------------------------------------------------
# Seeds and hostile inputs


def batch_pickle(n: int, rng: random.Random, protocol: int = 2) -> bytes:
    data = np.frombuffer(rng.randbytes(n * 3072), np.uint8).reshape(n, 3072)
    labels = [rng.randrange(10) for _ in range(n)]
    return pickle.dumps({b"batch_label": b"x", b"labels": labels, b"data": data}, protocol=protocol)


def odd_batch(rng: random.Random) -> bytes:
    """A well-formed pickle of the wrong thing: shapes, dtypes, labels, types."""
    n = rng.choice([0, 1, 2, 5])
    dtype = rng.choice([np.uint8, np.uint8, np.int64, np.float32, np.bool_, np.uint16, object])
    shape = rng.choice([(n, 3072), (n, 3, 32, 32), (n, 100), (3072,), (n, 3072, 1), ()])
    data: Any = np.zeros(shape, dtype=dtype) if dtype is not object else np.empty(shape, object)
    labels: Any = rng.choice([
        [rng.randrange(-3, 13) for _ in range(n)], list(range(n + 1)), [str(i) for i in range(n)],
        [1.5] * n, np.zeros((n, 2), np.int64), [2**70] * n, None, "labels", [[1]] * n,
        np.arange(n, dtype=np.float64), [True] * n])
    keys = rng.choice([(b"data", b"labels"), ("data", "labels"), (b"data",), (1, 2)])
    obj: Any = dict(zip(keys, (data, labels), strict=False))
    obj = rng.choice([obj, obj, obj, [data], "not a dict", 42, None, {b"data": obj}])
    return pickle.dumps(obj, protocol=rng.choice([2, 4, 5]))


def crafted_pickles() -> list[bytes]:
    """Pickles that try to allocate far more than their size, or to run code."""
    from numpy._core.multiarray import _reconstruct

    n = 10**6  # 3 GB of images from a pickle of a few hundred bytes
    huge = Call(_reconstruct, np.ndarray, (n, 3072), b"B")
    huge_labels = Call(_reconstruct, np.ndarray, (n,), b"b")
    return [pickle.dumps(obj, 2) for obj in (
        {b"data": huge, b"labels": huge_labels},
        {b"data": Call(np.ndarray, (n, 3072), np.uint8), b"labels": Call(np.ndarray, (n,))},
        {b"data": Call(__import__("_codecs").encode, "abc", "zlib")},
        Call(os.system, "echo pwned"), Call(eval, "1+1"),
    )] + object_dtype_pickles() + [pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, 5)[:-20], b"",
          b"\x80\x02Nr" + (667395525).to_bytes(4, "little") + b".",  # a 10 GB memo index
          b"\x80\x05\x96" + (2**31).to_bytes(8, "little") + b"\0" * 16 + b"."]  # 2 GB bytearray


def object_dtype_pickles() -> list[bytes]:
    """BUILDs that would make numpy read Python objects or more bytes than the pickle holds (a
    list one element short of the shape crashed the process), and opcode floods."""
    encode = __import__("_codecs").encode
    return (crafted.object_dtype_pickles()
            + [b"\x80\x02" + op * 1_000_000 + b"." for op in (b"]", b"(", b"}")]
            + [pickle.dumps([Call(encode, "x" * 100_000, "latin1") for _ in range(50)], 2)])


def _save(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def image_seeds(rng: random.Random) -> list[bytes]:
    base = Image.fromarray(np.frombuffer(rng.randbytes(40 * 48 * 3), np.uint8).reshape(40, 48, 3))
    seeds = []
    for mode in ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "I", "I;16", "I;16B"):
        img = base.convert("L").convert(mode) if mode.startswith("I") else base.convert(mode)
        if mode == "P":
            img.info["transparency"] = 3
        with contextlib.suppress(OSError, ValueError, KeyError):
            seeds.append(_save(img, "PNG"))
    for mode, fmt in (("CMYK", "JPEG"), ("L", "JPEG"), ("RGB", "JPEG"), ("CMYK", "TIFF"),
                      ("LAB", "TIFF"), ("F", "TIFF"), ("YCbCr", "TIFF"), ("I;16", "TIFF"),
                      ("RGB", "GIF"), ("P", "GIF"), ("RGB", "BMP"), ("RGBA", "WEBP"),
                      ("RGB", "TGA"), ("1", "BMP")):
        try:
            img = base.convert("L").convert(mode) if mode.startswith(("I", "F")) else base.convert(mode)
            seeds.append(_save(img, fmt))
        except (OSError, ValueError, KeyError):
            pass
    seeds += [_save(Image.new("RGB", (1, 1)), "PNG"), _save(Image.new("RGB", (3000, 2)), "PNG"),
              png_bomb(30000, 30000), png_bomb(2**31 - 1, 1), png_bomb(0, 5), b""]
    return seeds


def image_folder_files(rng: random.Random, images: list[bytes]) -> dict[str, bytes]:
    files = {}
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(2):
                files[f"root/{split}/{cls}/{i}.png"] = rng.choice(images[:6])
    return files


def official_files(rng: random.Random) -> dict[str, bytes]:
    meta = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, 2)
    files = {f"cifar-10-batches-py/data_batch_{i}": batch_pickle(2, rng) for i in range(1, 6)}
    files["cifar-10-batches-py/test_batch"] = batch_pickle(2, rng)
    files["cifar-10-batches-py/batches.meta"] = meta
    return files


def hostile_tar(tar: tarfile.TarFile) -> None:
    """Symlinks, hard links, a loop, a directory named like an image, a device, a FIFO."""
    for name, kind, target in (("root/train/cat/link.png", tarfile.SYMTYPE, "../dog/0.png"),
                               ("root/train/cat/loop.png", tarfile.SYMTYPE, "loop.png"),
                               ("root/train/cat/abs.png", tarfile.SYMTYPE, "/etc/passwd"),
                               ("root/train/dog/hard.png", tarfile.LNKTYPE, "root/train/cat/0.png"),
                               ("root/train/cat/dir.png", tarfile.DIRTYPE, ""),
                               ("root/train/cat/fifo.png", tarfile.FIFOTYPE, ""),
                               ("root/train/cat/dev.png", tarfile.CHRTYPE, "")):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        tar.addfile(info)


def archive_seeds(rng: random.Random, images: list[bytes]) -> list[tuple[str, bytes]]:
    folder = image_folder_files(rng, images)
    official = official_files(rng)
    bomb_member = {"root/train/cat/0.png": b"\0" * (300 << 20), "root/train/dog/0.png": images[0]}
    latin1 = {n.replace("cat", "caf\udce9"): d for n, d in folder.items()}  # non-UTF-8 bytes
    zip_lying = bytearray(crafted.zip_of(folder, zipfile.ZIP_STORED))
    zip_bomb = crafted.zip_of({"root/train/cat/0.png": b"\0" * (300 << 20), "root/train/dog/0.png":
                          images[0]})
    unsupported = bytearray(crafted.zip_of(folder))
    for offset in _find_all(bytes(unsupported), b"PK\x03\x04") + _find_all(bytes(unsupported),
                                                                          b"PK\x01\x02"):
        field = offset + (8 if unsupported[offset + 2] == 3 else 10)
        unsupported[field:field + 2] = (9).to_bytes(2, "little")  # deflate64: not in zipfile
    encrypted = bytearray(crafted.zip_of(folder))
    for offset in _find_all(bytes(encrypted), b"PK\x01\x02"):
        encrypted[offset + 8] |= 1
    for offset in _find_all(bytes(zip_lying), b"PK\x01\x02"):  # claim 4 GB uncompressed
        zip_lying[offset + 24:offset + 28] = (2**32 - 1).to_bytes(4, "little")
    return [
        ("x.tgz", crafted.tar_of(folder)), ("x.tar", crafted.tar_of(folder, "w")),
        ("x.tar.gz", crafted.tar_of(official)), ("x.zip", crafted.zip_of(folder)),
        ("x.zip", crafted.zip_of(official)), ("x.tgz", crafted.tar_of(folder, extra=hostile_tar)),
        ("x.tar", crafted.tar_of(folder, "w:xz")), ("x.tar", crafted.tar_of(folder, "w:bz2")),
        ("x.tgz", crafted.tar_of(bomb_member)), ("x.zip", zip_bomb), ("x.tgz", crafted.tar_of(latin1)),
        ("x.zip", bytes(zip_lying)), ("x.zip", bytes(unsupported)), ("x.zip", bytes(encrypted)),
        ("x.tgz", gzip.compress(b"\0" * (64 << 20))), ("x.tgz", b""), ("x.bin", b""),
        ("x.zip", b"PK\x05\x06" + b"\0" * 18),
        *meta_header_seeds(folder), *nested_seeds(folder, official),
    ]


def meta_header_seeds(folder: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Tar headers that make tarfile read a body into memory before any member check: long names
    and PAX headers claiming 64 MB, chains of PAX headers, a sparse member, 160,000 empty entries."""
    body = crafted.tar_of(folder, "w")[:-1024]  # the folder's members, without the end-of-archive blocks
    seeds = [("x.tgz", gzipped([tar_header("././@LongLink", kind, 64 << 20),
                                *(bytes(1 << 20) for _ in range(64))]))
             for kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                          tarfile.XGLTYPE)]
    pax = tar_header("././@PaxHeader", tarfile.XHDTYPE, 512) + b"9 a=bcd\n".ljust(512, b"\0")
    seeds.append(("x.tgz", gzipped([pax * 3000, body])))
    seeds.append(("x.tgz", gzipped([tar_header("root/train/cat/9.png", tarfile.GNUTYPE_SPARSE, 0), body])))
    seeds.append(("x.tgz", gzipped(tar_header(f"e{i}", tarfile.REGTYPE, 0) for i in range(160_000))))
    return seeds


def nested_seeds(folder: dict[str, bytes], official: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Archives inside archives, and zips that are not quite what they seem: a tar whose last member
    is a zip (zipfile finds the zip directory at the end), a zip in a zip, a zip made on Windows
    (backslashes), an official set zipped twice, a zip named like a tar."""
    inner = crafted.zip_of(folder)
    docx = crafted.zip_of({"word/document.xml": b"<w/>"})
    backslashed = {name.replace("/", "\\"): data for name, data in folder.items()}
    return [
        ("x.tar", crafted.tar_of({**folder, "root/notes.docx": docx}, "w")),
        ("x", crafted.tar_of({**folder, "root/more.zip": inner}, "w")),
        ("x.zip", crafted.zip_of({**folder, "root/train/cat/inner.png": inner})),
        ("x.zip", crafted.zip_of({"nested/inner.zip": crafted.zip_of(official)})),
        ("x.zip", crafted.zip_of(backslashed)),
        ("x.tgz", inner), ("x.zip", crafted.tar_of(folder)),
    ]


def model_zip_bombs(seed: bytes) -> list[bytes]:
    """model.pt files whose zip makes torch.load allocate far more than the file: a deflated
    64 MB record, a 3 MB empty-list flood as data.pkl, 20,000 records."""
    return [rezipped(seed, {"data/0": (bytes(64 << 20), zipfile.ZIP_DEFLATED)}),
            rezipped(seed, {"data.pkl": (b"\x80\x02" + b"]" * (3 << 20) + b".", zipfile.ZIP_STORED)}),
            rezipped(seed, {}, extra=20_000)]


def _find_all(data: bytes, needle: bytes) -> list[int]:
    found, start = [], data.find(needle)
    while start >= 0:
        found.append(start)
        start = data.find(needle, start + 1)
    return found


VALID_SETTINGS: dict[str, Any] = {
    "recipe": "base", "space": {"lr": {"log_uniform": [1e-4, 1e-2]}}, "fixed": {"epochs": 2},
    "trials": 4, "budget": None, "sampler": "tpe", "pruner": "median", "seed": 0, "startup": 4}
ROBUSTNESS = {"format": "cifarlab-robustness", "version": 1, "clean_acc": 0.6,
              "table": {"fog": [0.5, 0.4]}, "severities": [1, 3], "n_images": 100}
MODEL_FIELDS = ["model", "model_kwargs", "classes", "mean", "std", "config", "metrics", "epoch",
                "weights", "config.recipe", "config.val_fraction", "config.data", "metrics.val_acc",
                "metrics.epochs", "temperature"]


class StoredStudy:
    """What storage.settings_of reads of an Optuna study: its name and user attributes."""

    def __init__(self, settings: Any):
        self.study_name, self.user_attrs = "fuzz", {"cifarlab": settings}


def _set_dotted(mapping: dict[str, Any], key: str, value: Any) -> None:
    """mapping["a"]["b"] = value for "a.b" where mapping["a"] is a mapping, else mapping[key's head]."""
    head, _, rest = key.partition(".")
    if rest and isinstance(mapping.get(head), dict):
        mapping[head][rest] = value
    else:
        mapping[head] = value


def _plain(rng: random.Random, depth: int) -> Any:
    """A random JSON-like value, sometimes one a cifarlab reader expects (a model spec, a
    number, a list of texts), with keys that are not always text."""
    roll = rng.random()
    if depth > 0 and roll < 0.15:
        return [_plain(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    if depth > 0 and roll < 0.3:
        keys = [rng.choice(["a", "epochs", "recipe", "val_acc", 1, True, None, "x.py:Net"])
                for _ in range(rng.randint(0, 3))]
        return {key: _plain(rng, depth - 1) for key in keys}
    return rng.choice([None, True, False, 0, 1, -1, 2**70, 0.5, -0.0, math.nan, math.inf, "",
                       "base", "x.py:Net", "pkg.mod:Net", "1e-3", ["a", "b"], [1.0, 2.0, 3.0],
                       "sqlite:////tmp/elsewhere.db"])


def _document(rng: random.Random) -> bytes:
    """A random settings document, as YAML (anything a dict of plain values dumps to)."""
    import yaml

    value = {rng.choice(["epochs", "lr", "model", "augment", "on", "recipe", "x"]): _plain(rng, 3)
             for _ in range(rng.randint(0, 4))}
    return yaml.safe_dump(value).encode()


def mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    """One to three random edits of `data`."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(7)
        if not out or kind == 0:
            out = bytearray(rng.randbytes(rng.randrange(0, 4096)))
        elif kind == 1:
            del out[rng.randrange(len(out)):]
        elif kind == 2:
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif kind == 3:
            pos = rng.randrange(len(out))
            value = rng.choice([b"\xff" * 4, b"\0" * 4, b"\x7f\xff\xff\xff", b"\x80", rng.randbytes(8)])
            out[pos:pos + len(value)] = value
        elif kind == 4:
            pos = rng.randrange(len(out) + 1)
            out[pos:pos] = rng.randbytes(rng.randrange(1, 64))
        elif kind == 5:
            pos = rng.randrange(len(out))
            del out[pos:pos + rng.randrange(1, 256)]
        else:
            other = rng.choice(corpus or [data])
            cut = rng.randrange(len(out) + 1)
            out = out[:cut] + other[rng.randrange(len(other) + 1):]
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Targets: each takes the trial's random generator and scratch folder, and calls one reader


class Fuzzer:
    def __init__(self, scratch: Path, seed: int):
        self.scratch, self.rng = scratch, random.Random(seed)
        self.pending, self.last_input = scratch / "pending-input.bin", b""
        self.images = image_seeds(self.rng)
        self.batches = [batch_pickle(2, self.rng, p) for p in (2, 4, 5)] + crafted_pickles()
        self.archives = archive_seeds(self.rng, self.images)
        self.checkpoints = [crafted.checkpoint_blob()]
        self.checkpoints += model_zip_bombs(self.checkpoints[0])
        self.server: SlowClients | None = None
        self.folder_layouts = [image_folder_files(self.rng, self.images)]
        self.settings_seeds = [
            (".yaml", b"recipe: fast\nepochs: 3\nlr: 1e-3\naugment: {flip: true, translate: 2}\n"
                      b"model_kwargs: {widths: [8, 16]}\n"),
            (".json", json.dumps({"config": {"recipe": "base", "epochs": 2, "model": "base"}}).encode()),
            (".yaml", b"lr: {log_uniform: [1e-4, 1e-2]}\naugment.flip: {choice: [true, false]}\n"),
            (".yaml", crafted.alias_bomb().encode())]
        from cifarlab.networks import create_model

        self.model_record = checkpoint.model_record(
            create_model("base", 2, [128.0] * 3, [64.0] * 3), "base", ["a", "b"],
            {"recipe": "base", "epochs": 1}, {"val_acc": 0.5}, 1, "final")

    def batch(self) -> None:
        roll = self.rng.random()
        if roll < 0.3:
            data = odd_batch(self.rng)
        elif roll < 0.4:
            data = self.rng.choice(self.batches)
        else:
            data = mutate(self.rng.choice(self.batches), self.rng, self.batches)
        self._record(data)
        raw = sources.load_batch(data, "fuzz")
        sources._batch_arrays(raw, "fuzz", 10)

    def image(self) -> None:
        seed = self.rng.choice(self.images)
        data = seed if self.rng.random() < 0.1 else mutate(seed, self.rng, self.images)
        self._record(data)
        array, _ = sources.decode_image(data, "fuzz.png")
        assert array.shape == (32, 32, 3) and array.dtype == np.uint8, array.shape

    def archive(self) -> None:
        name, data = self.rng.choice(self.archives)
        roll = self.rng.random()
        if roll < 0.15:
            pass  # the seed itself
        elif roll < 0.5 and data[:2] == b"\x1f\x8b" and len(data) < 100_000:
            # mutate the tar inside the gzip, so the tar parser sees the damage
            data = gzip.compress(mutate(gzip.decompress(data), self.rng, []), compresslevel=1)
        elif roll < 0.6:
            name = self.rng.choice(["x.tgz", "x.zip", "x.tar", "x.bin", "x.tar.gz"])
        else:
            data = mutate(data, self.rng, [d for _, d in self.archives[:5]])
        self._record(data)
        path = self.scratch / name
        path.write_bytes(data)
        self._check(sources.read_source(path))

    def folder(self) -> None:
        root = self.scratch / "tree"
        shutil.rmtree(root, ignore_errors=True)
        if self.rng.random() < 0.3:  # an official folder with one damaged batch
            files = {k.split("/", 1)[1]: v for k, v in official_files(self.rng).items()}
            victim = self.rng.choice(sorted(files))
            files[victim] = mutate(files[victim], self.rng, self.batches)
        else:
            files = {k.split("/", 1)[1]: v for k, v in self.folder_layouts[0].items()}
            for name in self.rng.sample(sorted(files), self.rng.randint(0, 3)):
                files[name] = mutate(files[name], self.rng, self.images)
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        cls = root / "train" / "cat"
        if cls.is_dir():
            self._hostile_entries(cls)
        self._record(repr(sorted(files)).encode())
        # through load_dataset: its cache key hashes every file name in the tree
        dataset = load_dataset(root, quiet=True, use_cache=False)
        self._check(sources.RawData(dataset.kind, dataset.classes,
                                    {k: v.images for k, v in dataset.splits.items()},
                                    {k: v.labels for k, v in dataset.splits.items()}))

    def _hostile_entries(self, folder: Path) -> None:
        for number in range(self.rng.randint(0, 3)):
            kind = self.rng.randrange(7)
            name = f"h{number}.png"
            target = folder / name
            if kind == 0:
                target.symlink_to(name)  # a loop onto itself
            elif kind == 1:
                (folder / f"loop{number}").symlink_to("..")  # a folder loop
            elif kind == 2:
                target.write_bytes(b"")
            elif kind == 3:
                os.mkfifo(target)
            elif kind == 4:
                raw = os.fsencode(folder) + b"/\xff\xfe" + name.encode()  # not UTF-8
                with open(raw, "wb") as handle:
                    handle.write(self.rng.choice(self.images[:6]))
            elif kind == 5:
                target.symlink_to("/nonexistent/x.png")
            else:
                os.makedirs(os.fsencode(folder.parent) + b"/caf\xe9", exist_ok=True)

    def checkpoint(self) -> None:
        data = mutate(self.rng.choice(self.checkpoints), self.rng, self.checkpoints)
        self._record(data)
        path = self.scratch / "checkpoint.pt"
        path.write_bytes(data)
        checkpoint.load(path, checkpoint.CHECKPOINT_FORMAT)

    # -----------------------------------------------------------------------------------------
    # Issue 22: what comes with a folder from someone else

    def settings(self) -> None:
        """A config or space file: a real one mutated, an odd one, or a random document."""
        from cifarlab.config import resolve
        from cifarlab.hpsearch.space import read_space

        roll = self.rng.random()
        if roll < 0.25:
            suffix, text = self.rng.choice(list(crafted.ODD_SETTINGS.values()))
            data = text.encode()
        elif roll < 0.45:
            suffix, data = ".yaml", _document(self.rng)
        else:
            suffix, data = self.rng.choice(self.settings_seeds)
            if roll > 0.55:
                data = mutate(data, self.rng, [d for _, d in self.settings_seeds])
        self._record(data)
        path = self.scratch / f"settings{suffix}"
        path.write_bytes(data)
        if self.rng.random() < 0.5:  # as a config file, else as a search space
            config = resolve(None, path, {})
            assert ":" not in config.model, f"a settings file named the model {config.model}"
            json.dumps(config.to_dict(), allow_nan=False)
        else:
            read_space(path, "base")

    def search(self) -> None:
        """search.json beside a study.db (a file, a link or missing), and stored study settings."""
        from cifarlab.hpsearch.storage import own_storage, read_pointer, settings_of
        from cifarlab.hpsearch.study import trial_model

        folder = self.scratch / "search"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        pointers = [json.dumps(p).encode() for p in crafted.POINTERS.values()]
        pointers.append(b'{"storage": null, "study": "s", "spent_seconds": 12.5}')
        pointer = self.rng.choice(pointers)
        if self.rng.random() < 0.7:
            pointer = mutate(pointer, self.rng, pointers)
        (folder / "search.json").write_bytes(pointer)
        own = self.rng.choice(["file", "link", "missing"])
        if own == "file":
            (folder / "study.db").write_bytes(b"")
        elif own == "link":
            (folder / "study.db").symlink_to(self.scratch / "elsewhere.db")
        settings = json.loads(json.dumps(VALID_SETTINGS))
        for _ in range(self.rng.randint(0, 3)):
            key = self.rng.choice([*VALID_SETTINGS, "fixed.model", "fixed.config_file",
                                   "fixed.nproc", "fixed.epochs", "space.lr"])
            _set_dotted(settings, key, _plain(self.rng, 2))
        self._record(pointer + b"\n" + json.dumps(settings, default=str).encode())
        if self.rng.random() < 0.5:
            url, _, _ = read_pointer(folder)
            assert url == own_storage(folder) and own == "file", f"the pointer opened {url}"
        else:
            checked = settings_of(StoredStudy(settings))  # type: ignore[arg-type]
            model = trial_model(checked["fixed"].get("model"), None, folder)
            assert not (isinstance(model, str) and ":" in model), f"a study named {model}"

    def runfolder(self) -> None:
        """A run folder whose config.json, summary.json, metrics.csv or robustness.json is odd:
        read as compare and report read it."""
        import cifarlab as cl
        from cifarlab import rundir
        from cifarlab.comparison import FORMATS, compare_rows, format_rows
        from cifarlab.diagnose import diagnose
        from cifarlab.report import render_html

        run = self.scratch / "run"
        shutil.rmtree(run, ignore_errors=True)
        crafted.write_run(run, summary={"val_acc_tta": 0.7, "best_weights_epoch": 2})
        (run / "robustness").mkdir()
        (run / "robustness" / "robustness.json").write_text(json.dumps(ROBUSTNESS))
        files = self.rng.choice(list(crafted.ODD_RUN_FILES.values()))
        name = self.rng.choice(["metrics.csv", "config.json", "summary.json",
                                "robustness/robustness.json"])
        seed = (run / name).read_bytes()
        roll = self.rng.random()
        data = (files.get(name, "").encode() if roll < 0.3
                else seed if roll < 0.4 else mutate(seed, self.rng, [seed]))
        (run / name).write_bytes(data)
        self._record(name.encode() + b"\n" + data)
        files_read = rundir.read(run)
        for fmt in FORMATS:
            format_rows(compare_rows([files_read]), fmt)
        render_html(files_read, diagnose(files_read.history), None, "skipped", {"curves.png": b""})
        repr(cl.load(run))

    def modelmeta(self) -> None:
        """A model file whose metadata fields hold anything: loaded as predict and export load
        it; one that loads must give finite probabilities."""
        from cifarlab.export import sidecar_contents

        record = copy.deepcopy(self.model_record)
        for _ in range(self.rng.randint(1, 3)):
            field = self.rng.choice(MODEL_FIELDS)
            if field == "temperature":
                record["state_dict"]["temperature"] = torch.tensor(
                    self.rng.choice([0.0, -1.0, math.nan, math.inf, 1e-30, 2.0]))
                continue
            _set_dotted(record, field, _plain(self.rng, 2))
        self._record(repr({k: v for k, v in record.items() if k != "state_dict"}).encode())
        path = self.scratch / "model.pt"
        checkpoint.save(path, record)
        model, saved = checkpoint.load_model(path)
        probs = model(torch.zeros(1, 3, 32, 32)).softmax(1)
        assert bool(torch.isfinite(probs).all()), "a loaded model gave non-finite probabilities"
        sidecar_contents(saved, "onnx", "model.onnx")
        json.dumps({"model": saved["model"], "config": saved.get("config"),
                    "metrics": saved.get("metrics")}, allow_nan=True)

    def socket(self) -> None:
        if self.server is None:
            self.server = SlowClients(self.scratch)
        self._record(self.server.trial(self.rng))

    def _record(self, data: bytes) -> None:
        """Keep the input about to be tried, on disk too: a hang in C code ends the process."""
        self.last_input = data
        self.pending.write_bytes(data)

    @staticmethod
    def _check(raw: sources.RawData) -> None:
        """A load that succeeds must be a correct one."""
        assert raw.classes and "train" in raw.images, raw.classes
        for split, images in raw.images.items():
            assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3), images.shape
            labels = raw.labels[split]
            assert labels.shape == (len(images),) and labels.min() >= 0
            assert labels.max() < len(raw.classes)


class SlowClients:
    """A live `cifarlab serve` app on 127.0.0.1 (an untrained model) and a pool of slow clients."""

    HEADER_SECONDS = 0.5  # short, so that dropped connections show within a trial or two
    HEADS = (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
             b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n",
             b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n")

    def __init__(self, scratch: Path):
        import threading

        import uvicorn

        from cifarlab.networks import create_model
        from cifarlab.serve import Limits, create_app, listen, uvicorn_config

        model = create_model("base", 2, [128.0] * 3, [64.0] * 3)
        checkpoint.save(scratch / "model.pt", checkpoint.model_record(
            model, "base", ["a", "b"], {}, {}, 0, "final"))
        limits = Limits(max_concurrency=4, header_seconds=self.HEADER_SECONDS, upload_seconds=1.0)
        self.sock = listen("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(create_app(scratch / "model.pt", limits), limits))
        threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True).start()
        while not self.server.started:
            time.sleep(0.02)
        self.open: list[tuple[float, socket.socket]] = []  # (opened at, socket) of slow clients

    def trial(self, rng: random.Random) -> bytes:
        """One slow or broken client, left open; then /health for a normal one. Returns the bytes
        the slow client sent (the finding's input)."""
        head = rng.choice(self.HEADS)
        data = mutate(head, rng, []) if rng.random() < 0.3 else head
        if rng.random() < 0.6:
            data = data[:rng.randrange(len(data) + 1)]  # a head or body never finished
        else:
            data += rng.randbytes(rng.randrange(64))
        client = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        with contextlib.suppress(OSError):
            for start in range(0, len(data), step := rng.randint(1, 16)):
                client.sendall(data[start:start + step])
                time.sleep(rng.choice([0, 0, 0.01, 0.05]))
        self.open.append((time.monotonic(), client))
        self._health()
        self._check_dropped()
        return data

    def _health(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as normal:
            normal.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := normal.recv(65536):
                reply += chunk
        if not reply.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"/health answered {reply[:60]!r} beside slow clients")

    def _check_dropped(self) -> None:
        """A client that has been open for longer than the head deadline (plus the upload deadline
        and slack) must have been closed by the server by now."""
        now, still = time.monotonic(), []
        for opened, client in self.open:
            if now - opened < self.HEADER_SECONDS + 3:
                still.append((opened, client))
                continue
            client.setblocking(False)
            try:
                while client.recv(65536):
                    pass
                closed = True
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            client.close()
            if not closed:
                raise AssertionError(f"a slow client was still connected after {now - opened:.1f} s")
        self.open = still


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="total time (default: 60)")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10, help="seconds one input may take")
    parser.add_argument("--max-mb", type=float, default=300, help="peak memory growth allowed")
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    sources.warn = lambda message: None  # "N images were resized" on every other input
    signal.signal(signal.SIGALRM, _alarm)
    scratch = Path(tempfile.mkdtemp(prefix="cifarlab-fuzz-", dir="/dev/shm"
                                    if os.path.isdir("/dev/shm") else None))
    fuzzer = Fuzzer(scratch, args.seed)
    print(f"fuzzing {', '.join(args.targets)} for {args.seconds:.0f} s; if a hang kills this run, "
          f"the input is {fuzzer.pending}", flush=True)
    counts: dict[str, collections.Counter[str]] = {t: collections.Counter() for t in args.targets}
    findings: list[str] = []
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline:
            for target in args.targets:
                fuzzer.last_input, detail = b"", ""
                signal.setitimer(signal.ITIMER_REAL, args.timeout)
                # A hang in C code ignores SIGALRM: dump the stack and exit; the input that
                # hung is then in fuzzer.pending (printed at the start).
                faulthandler.dump_traceback_later(args.timeout * 3, exit=True)
                try:
                    getattr(fuzzer, target)()
                    outcome = "loaded"
                except UserError:
                    outcome = "UserError"
                except Hang:
                    outcome = "HANG"
                except Exception as exc:  # a finding: anything but UserError
                    outcome = f"{type(exc).__name__}"
                    detail = traceback.format_exc(limit=-3)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    faulthandler.cancel_dump_traceback_later()
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                if peak - baseline > args.max_mb:
                    outcome, detail = "MEMORY", f"peak memory grew by {peak - baseline:.0f} MB"
                    baseline = peak
                counts[target]["tried"] += 1
                counts[target][outcome] += 1
                if outcome not in ("loaded", "UserError"):
                    args.out.mkdir(exist_ok=True)
                    file = args.out / f"{target}-{len(findings)}.bin"
                    file.write_bytes(fuzzer.last_input)
                    findings.append(f"{target}: {outcome} ({file})\n{detail if outcome != 'HANG' else ''}")
                    print(findings[-1], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total = sum(c["tried"] for c in counts.values())
    print(f"{total} inputs tried in {args.seconds:.0f} s (seed {args.seed}):")
    for target, c in counts.items():
        others = {k: v for k, v in c.items() if k not in ("tried", "loaded", "UserError")}
        print(f"  {target:<10} {c['tried']:>7} tried, {c['loaded']:>6} loaded, "
              f"{c['UserError']:>6} UserError, findings: {others or 'none'}")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
