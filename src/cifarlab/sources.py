"""Readers for every supported data source, each returning uint8 image arrays.

Supported: the official `cifar-10-python.tar.gz`, its extracted `cifar-10-batches-py/` folder, and
an image-folder tree `ROOT/{train,test}/<class>/*.{png,jpg,jpeg}` (or `ROOT/<class>/*`, train only)
as a folder or a .tar/.tgz/.tar.gz/.zip archive of one. Images are HWC uint8, 32x32x3.

The official batches are pickles. Unpickling can run arbitrary code, so they are read with an
unpickler that only accepts the handful of numpy names a CIFAR batch actually contains, and only in
the way numpy itself uses them (so a 100-byte pickle cannot ask for a 3 GB array either).

Everything here reads untrusted files: a damaged or hostile input is a `UserError`, never another
exception, and memory stays bounded (size limits on files, archive members and decoded images).
benchmarks/fuzz_readers.py and tests/test_fuzz.py check that.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import lzma
import pickle
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifarlab.errors import UserError, warn

IMAGE_SIZE = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_DIRNAME = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
ARCHIVE_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".zip")
# Limits that bound memory on hostile input, far above anything real: an official batch file is
# 31 MB, a CIFAR image 1-3 KB, and the whole official set decodes to 180 MB.
MAX_FILE_BYTES = 256 << 20  # one batch file, image or archive member
MAX_ARCHIVE_BYTES = 2 << 30  # all the members of an archive that are read, together
MAX_DECODE_PIXELS = 40_000_000  # an image larger than this (after JPEG draft scaling) is refused
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")  # what PIL may try (JPEG covers MPO)
# What reading an archive can raise on damaged input, besides UserError.
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError,
                  ValueError, zlib.error, lzma.LZMAError, NotImplementedError)


@dataclass
class RawData:
    """What a source holds: class names and, per split, images (N,32,32,3 uint8) and labels."""

    kind: str
    classes: list[str]
    images: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    resized: int = 0  # how many images were not 32x32 and were resized


def read_source(path: Path) -> RawData:
    """Detect the kind of `path` and read it."""
    if not path.exists():
        raise UserError(f"data source not found: {path}")
    if path.is_dir():
        if (path / OFFICIAL_DIRNAME).is_dir():
            path = path / OFFICIAL_DIRNAME
        if (path / "batches.meta").exists() or (path / TRAIN_BATCHES[0]).exists():
            return read_official_dir(path)
        return read_image_folder(path)
    name = path.name.lower()
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        if name.endswith(ARCHIVE_SUFFIXES) or tarfile.is_tarfile(path):
            return _read_tar(path)
    except ARCHIVE_ERRORS as exc:
        raise UserError(f"corrupt or truncated archive {path}: {exc or type(exc).__name__}") from exc
    raise UserError(
        f"unsupported data source {path}: expected cifar-10-python.tar.gz, a cifar-10-batches-py "
        "folder, or an image folder (ROOT/train/<class>/*.png) or an archive of one"
    )


# ---------------------------------------------------------------------------------------------
# The official python format


_NDARRAY = object()  # stands for numpy.ndarray, which a pickle may name but never call


def _reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
    """numpy's `_reconstruct` as numpy pickles use it: an empty array that BUILD then fills from
    the pickle's own bytes. Any other shape would allocate memory the file does not hold."""
    if subtype is not _NDARRAY or shape != (0,):
        raise pickle.UnpicklingError("unexpected array construction")
    real = importlib.import_module("numpy._core.multiarray")._reconstruct
    return real(np.ndarray, shape, dtype)


def _encode(text: object, encoding: object = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles write bytes (latin1); no other codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected codecs.encode call")
    return text.encode("latin1")


class _BatchUnpickler(pickle._Unpickler):
    """Unpickles CIFAR batches and refuses everything else (no arbitrary code execution).

    It is the pure-Python unpickler: the C one sizes its memo table by the largest index a pickle
    names, so 6 hostile bytes (LONG_BINPUT 667395525) make it allocate and clear 10 GB. And a
    bytearray may not claim more bytes than the whole pickle holds.
    """

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._size = len(data)

    def _load_bytearray8(self) -> None:
        this: Any = self  # read, readinto and append are set per instance by the base class
        (size,) = struct.unpack("<Q", this.read(8))
        if size > self._size:
            raise pickle.UnpicklingError(f"a bytearray claims {size} bytes in a {self._size}-byte "
                                         "file")
        buffer = bytearray(size)
        this.readinto(buffer)
        this.append(buffer)

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = {
        **pickle._Unpickler.dispatch, pickle.BYTEARRAY8[0]: _load_bytearray8}

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5; a view of the pickle's own bytes
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in a protocol-2 pickle
    })

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if name == "_reconstruct":
            return _reconstruct
        if name == "ndarray":
            return _NDARRAY
        if name == "encode":
            return _encode
        if module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return getattr(importlib.import_module(module), name)


def load_batch(data: bytes, name: str) -> dict[str, object]:
    """Unpickle one batch file safely; keys come back as str."""
    try:
        with warnings.catch_warnings():  # numpy deprecation notes about odd dtype arguments
            warnings.simplefilter("ignore")
            obj = _BatchUnpickler(data).load()
    except Exception as exc:  # any failure to unpickle is a bad file, never a crash
        raise UserError(f"{name} is not a valid CIFAR-10 batch file: {exc}") from exc
    if not isinstance(obj, dict):
        raise UserError(f"{name} is not a valid CIFAR-10 batch file (not a dict)")
    return {k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k): v
            for k, v in obj.items()}


def _batch_arrays(batch: dict[str, object], name: str, num_classes: int) -> tuple[np.ndarray, ...]:
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{name}: 'data' must be an array of shape (N, 3072)")
    if data.dtype != np.uint8:
        raise UserError(f"{name}: 'data' must be uint8, got {data.dtype}")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise UserError(f"{name}: 'labels' must be a list of integers") from exc
    if label_array.shape != (data.shape[0],):
        raise UserError(f"{name}: {data.shape[0]} images but {label_array.size} labels")
    if label_array.size and (label_array.min() < 0 or label_array.max() >= num_classes):
        raise UserError(f"{name}: labels must lie in 0..{num_classes - 1}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), label_array


def _official_from_files(files: dict[str, bytes], origin: str) -> RawData:
    missing = [n for n in ["batches.meta", *TRAIN_BATCHES, "test_batch"] if n not in files]
    if missing:
        raise UserError(f"{origin}: not a complete CIFAR-10 python set, missing {', '.join(missing)}")
    meta = load_batch(files["batches.meta"], "batches.meta")
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise UserError(f"{origin}: batches.meta must list 10 label_names")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    raw = RawData(kind="cifar10-python", classes=classes)
    parts = [_batch_arrays(load_batch(files[n], n), n, 10) for n in TRAIN_BATCHES]
    raw.images["train"] = np.concatenate([p[0] for p in parts])
    raw.labels["train"] = np.concatenate([p[1] for p in parts])
    raw.images["test"], raw.labels["test"] = _batch_arrays(
        load_batch(files["test_batch"], "test_batch"), "test_batch", 10
    )
    return raw


def read_official_dir(path: Path) -> RawData:
    files = {}
    for name in ["batches.meta", *TRAIN_BATCHES, "test_batch"]:
        if (path / name).is_file():
            files[name] = read_file(path / name)
    return _official_from_files(files, str(path))


def read_file(path: Path) -> bytes:
    """The bytes of one input file, refusing anything larger than MAX_FILE_BYTES."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    _check_size(len(data), str(path))
    return data


def _check_size(size: int, name: str) -> None:
    if size > MAX_FILE_BYTES:
        raise UserError(f"{name} is larger than {MAX_FILE_BYTES >> 20} MB: not a CIFAR file "
                        "or image")


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Image folders


def decode_image(data: bytes, name: str) -> tuple[np.ndarray, bool]:
    """Decode a PNG, JPEG, GIF, BMP, WebP or TIFF image to 32x32 RGB uint8; also say whether it had
    to be resized. Images over MAX_DECODE_PIXELS are refused before they are decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" and such: the pixels are fine
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                img.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))  # lets JPEG decode at reduced size
                width, height = img.size
                if width * height > MAX_DECODE_PIXELS:
                    raise UserError(f"image {name} is {width}x{height} pixels, larger than "
                                    f"cifarlab decodes ({MAX_DECODE_PIXELS:,} pixels)")
                rgb = _to_rgb(img)
    except UserError:
        raise
    except Exception as exc:  # image parsers raise many types on damaged input; all mean "bad file"
        raise UserError(f"cannot decode image {name}: {_reason(exc)}") from exc
    resized = rgb.size != (IMAGE_SIZE, IMAGE_SIZE)
    if resized:
        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(rgb, dtype=np.uint8), resized


def _reason(exc: Exception) -> str:
    """Why PIL failed, in our words: its "cannot identify image file <_io.BytesIO object at 0x...>"
    names an object of ours, not the user's file."""
    if isinstance(exc, UnidentifiedImageError):
        return f"not an image in a format cifarlab reads ({', '.join(IMAGE_FORMATS)})"
    return str(exc) or type(exc).__name__


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (P, LA, RGBA, CMYK, I;16, ...) to RGB; transparency goes on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(array.max()), 1.0)
        img = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _parse_layout(paths: list[str], origin: str) -> dict[str, dict[str, list[str]]]:
    """{split: {class: [paths]}} for ROOT/{train,test}/<class>/* (or ROOT/<class>/*: train only)."""
    images = [p for p in paths if _is_image(p)]
    if not images:
        raise UserError(f"{origin}: no images found (.png, .jpg, .jpeg)")
    layout: dict[str, dict[str, list[str]]] = {}
    with_split = [p for p in images if len(PurePosixPath(p).parts) >= 3
                  and PurePosixPath(p).parts[-3] in ("train", "test")]
    chosen = with_split or images
    for p in sorted(chosen):
        parts = PurePosixPath(p).parts
        if len(parts) < 2:
            raise UserError(f"{origin}: image {p} is not inside a class folder")
        split = parts[-3] if with_split else "train"
        layout.setdefault(split, {}).setdefault(_display(parts[-2]), []).append(p)
    if "train" not in layout:  # e.g. the official test set as images: enough to evaluate on
        if len(layout["test"]) < 2:
            raise UserError(f"{origin}: need at least 2 class folders in test/, found {len(layout['test'])}")
        return layout
    if "test" in layout:
        train_classes, test_classes = set(layout["train"]), set(layout["test"])
        if train_classes - test_classes:
            missing = ", ".join(sorted(train_classes - test_classes))
            raise UserError(f"{origin}: class folder(s) {missing} in train/ but missing from test/")
        if test_classes - train_classes:
            extra = ", ".join(sorted(test_classes - train_classes))
            raise UserError(f"{origin}: class folder(s) {extra} in test/ but not in train/")
    if len(layout["train"]) < 2:
        raise UserError(f"{origin}: need at least 2 class folders, found {len(layout['train'])}")
    return layout


def _display(name: str) -> str:
    """A class name that can be printed: bytes of a folder name that were not UTF-8 are written
    out as escapes (caf\\udce9), instead of failing later in print() or json."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_image(path: str) -> bool:
    pure = PurePosixPath(path)
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in pure.parts)
    return pure.suffix.lower() in IMAGE_SUFFIXES and not hidden


def _decode_layout(layout: dict[str, dict[str, list[str]]], read: Callable[[str], bytes],
                   kind: str) -> RawData:
    classes = sorted(layout["train"] if "train" in layout else layout["test"])
    raw = RawData(kind=kind, classes=classes)
    for split, by_class in layout.items():
        count = sum(len(v) for v in by_class.values())
        images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        labels = np.empty(count, dtype=np.int64)
        i = 0
        for label, cls in enumerate(classes):
            for p in by_class.get(cls, []):
                images[i], was_resized = decode_image(read(p), p)
                labels[i] = label
                raw.resized += was_resized
                i += 1
        raw.images[split], raw.labels[split] = images, labels
    if raw.resized:
        warn(f"{raw.resized} image(s) were not {IMAGE_SIZE}x{IMAGE_SIZE} and were resized")
    return raw


def read_image_folder(root: Path) -> RawData:
    paths = []
    for file in root.rglob("*"):
        if file.is_file():
            paths.append(file.relative_to(root).as_posix())
    layout = _parse_layout(paths, str(root))
    return _decode_layout(layout, lambda p: read_file(root / p), "image-folder")


def _read_tar(path: Path) -> RawData:
    """Read a tar archive in one forward pass (seeking back in a .tgz means decompressing again)."""
    official = {"batches.meta", *TRAIN_BATCHES, "test_batch"}
    batch_files: dict[str, bytes] = {}
    images: dict[str, bytes] = {}
    total = 0
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            base = PurePosixPath(member.name).name
            if not member.isfile() or not (base in official or _is_image(member.name)):
                continue
            total += member.size
            _check_member(member.name, member.size, total, path)
            handle = tar.extractfile(member)
            data = handle.read() if handle else b""
            if base in official:
                batch_files[base] = data
            else:
                images[member.name] = data
    if TRAIN_BATCHES[0] in batch_files:
        raw = _official_from_files(batch_files, str(path))
        if file_md5(path) != OFFICIAL_MD5:
            warn(f"{path.name} does not match the official CIFAR-10 MD5 ({OFFICIAL_MD5}); "
                 "its structure is valid, so it is used")
        return raw
    layout = _parse_layout(list(images), str(path))
    return _decode_layout(layout, images.__getitem__, "image-folder-archive")


def _check_member(name: str, size: int, total: int, archive: Path) -> None:
    _check_size(size, f"{archive}: member {name}")
    if total > MAX_ARCHIVE_BYTES:
        raise UserError(f"{archive} holds more than {MAX_ARCHIVE_BYTES >> 30} GB of images; "
                        "extract it and pass the folder")


def _read_zip(path: Path) -> RawData:
    official = {"batches.meta", *TRAIN_BATCHES, "test_batch"}
    with zipfile.ZipFile(path) as archive:
        # (not ZipInfo.is_dir(), which raises IndexError on an empty member name)
        infos = {i.filename: i for i in archive.infolist()
                 if i.filename and not i.filename.endswith("/")}
        if any(PurePosixPath(n).name == TRAIN_BATCHES[0] for n in infos):
            wanted = [n for n in infos if PurePosixPath(n).name in official]
            files = dict(zip((PurePosixPath(n).name for n in wanted),
                             _read_members(archive, [infos[n] for n in wanted], path), strict=True))
            return _official_from_files(files, str(path))
        layout = _parse_layout(list(infos), str(path))
        wanted = [p for by_class in layout.values() for ps in by_class.values() for p in ps]
        contents = dict(zip(wanted, _read_members(archive, [infos[n] for n in wanted], path),
                            strict=True))
    return _decode_layout(layout, contents.__getitem__, "image-folder-archive")


def _read_members(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], path: Path) -> list[bytes]:
    """Read zip members within the size limits (zipfile stops at the declared size, so a member
    that decompresses to more than it claims is cut off there and fails its CRC check)."""
    out, total = [], 0
    for info in infos:
        total += info.file_size
        _check_member(info.filename, info.file_size, total, path)
        try:
            out.append(archive.read(info))
        except RuntimeError as exc:  # zipfile's word for an encrypted member
            raise UserError(f"{path}: cannot read {info.filename}: {exc}") from exc
    return out
