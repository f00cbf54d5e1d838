"""Readers for every supported data source, each returning uint8 image arrays.

Supported: the official `cifar-10-python.tar.gz` and `cifar-100-python.tar.gz`, their extracted
`cifar-10-batches-py/` and `cifar-100-python/` folders, and an image-folder tree
`ROOT/{train,val,test}/<class>/*.{png,jpg,jpeg}` (split folders in any case, val/ optional; or
`ROOT/<class>/*`, train only) as a folder or a .tar/.tgz/.tar.gz/.zip archive of one. Images are
HWC uint8, 32x32x3. CIFAR-100 has two label sets: its 100 classes ("fine", the default) or its 20
superclasses ("coarse"), as Keras' `cifar100.load_data(label_mode=...)`.

The official batches are pickles. Unpickling can run arbitrary code, so they are read with an
unpickler that only accepts the handful of numpy names a CIFAR batch actually contains, and only in
the way numpy itself uses them (so a 100-byte pickle cannot ask for a 3 GB array either).

Everything here reads untrusted files: a damaged or hostile input is a `UserError`, never another
exception, and memory stays bounded (size limits on files, archive members and decoded images).
benchmarks/fuzz_readers.py and tests/test_fuzz.py check that.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import itertools
import lzma
import math
import os
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
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarlab.errors import UserError, warn

IMAGE_SIZE = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_DIRNAME = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_DIRNAME = "cifar-100-python"
CIFAR100_FILES = ("meta", "train", "test")
# CIFAR-100's label sets and their classes: label_mode "fine" (the default) or "coarse".
LABEL_MODES = {"fine": 100, "coarse": 20}
MAX_CLASS_NAME = 255  # characters in a label name: a folder name's limit on common file systems
TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Limits that bound memory on hostile input, far above anything real: an official batch file is
# 31 MB, a CIFAR image 1-3 KB, and the whole official set decodes to 180 MB.
MAX_FILE_BYTES = 256 << 20  # one batch file, image or archive member
MAX_ARCHIVE_BYTES = 2 << 30  # all the members of an archive that are read, together
# An image larger than this is refused before decoding, even a JPEG that `draft` would decode at
# 1/8 scale: a progressive JPEG keeps all its coefficients in memory (~3 bytes a pixel) either way.
MAX_DECODE_PIXELS = 40_000_000
MAX_ENTRIES = 150_000  # archive members or folder entries: CIFAR-10 as image files is 60,000
MAX_DEPTH = 32  # folders below an image folder's root: ROOT/train/<class>/ is 2
# tarfile reads a meta header's body (a GNU long name, a PAX header) into memory before cifarlab
# sees the member it describes. A real one is a path or a few keys (< 1 KB); GNU tar's posix format
# writes one per member, so 60,000 images carry ~60 MB of them.
MAX_META_BYTES = 1 << 20
MAX_ARCHIVE_META_BYTES = 128 << 20
MAX_META_CHAIN = 4  # meta headers in a row before a member (PAX + long name + long link: 3)
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


def read_source(path: Path, label_mode: str = "fine") -> RawData:
    """Detect the kind of `path` and read it; `label_mode` picks CIFAR-100's label set."""
    if label_mode not in LABEL_MODES:
        raise UserError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    if not path.exists():
        raise UserError(f"data source not found: {path}")
    if path.is_dir():
        path = inner_folder(path)
        if _is_cifar100({name for name in CIFAR100_FILES if (path / name).is_file()}):
            return read_cifar100_dir(path, label_mode)
        one_label_set(label_mode, path)
        if (path / "batches.meta").exists() or (path / TRAIN_BATCHES[0]).exists():
            return read_official_dir(path)
        return read_image_folder(path)
    # The suffix decides, else the tar header: is_zipfile looks for a zip directory at the *end*, so
    # an uncompressed .tar whose last member is a .zip, .npz or .docx would pass for that zip.
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            return _read_zip(path, label_mode)
        if name.endswith(TAR_SUFFIXES) or tarfile.is_tarfile(path):
            return _read_tar(path, label_mode)
        if zipfile.is_zipfile(path):
            return _read_zip(path, label_mode)
    except ARCHIVE_ERRORS as exc:
        # first line only: tarfile's "could not be opened" lists every method it tried, one a line
        reason = str(exc).strip().splitlines()[0].rstrip(":") if str(exc).strip() else type(exc).__name__
        raise UserError(f"corrupt or truncated archive {path}: {reason}") from exc
    raise UserError(
        f"unsupported data source {path}: expected cifar-10-python.tar.gz or "
        "cifar-100-python.tar.gz, their extracted folder, or an image folder "
        "(ROOT/train/<class>/*.png) or an archive of one"
    )


def inner_folder(path: Path) -> Path:
    """The official set's folder inside `path` (as the archives hold it), else `path` itself."""
    inner = [path / name for name in (OFFICIAL_DIRNAME, CIFAR100_DIRNAME) if (path / name).is_dir()]
    if len(inner) > 1:
        raise UserError(f"{path} holds both {OFFICIAL_DIRNAME}/ and {CIFAR100_DIRNAME}/: pass the "
                        "one you mean")
    return inner[0] if inner else path


def one_label_set(label_mode: str, origin: object) -> None:
    """A source other than CIFAR-100 has one set of labels: "coarse" has no meaning there."""
    if label_mode != "fine":
        raise UserError(f"label_mode '{label_mode}' picks CIFAR-100's 20 superclasses, and {origin} "
                        "is not CIFAR-100: it has one set of labels (leave label_mode 'fine')")


# ---------------------------------------------------------------------------------------------
# The official python format


_NDARRAY = object()  # stands for numpy.ndarray, which a pickle may name but never call
# A real batch takes ~30,000 opcodes (10,000 labels and 10,000 file names; ~90,000 when Python 3
# writes protocol 2). Each opcode can leave a ~70-byte object behind (an empty list is one byte of
# pickle), so the budget bounds memory to ~35 MB however the bytes are spent.
MAX_PICKLE_OPS = 500_000
PLAIN_DTYPE_KINDS = "biuf"  # bool, int, uint, float: what a batch holds; never objects or records


def _plain_dtype(dtype: object) -> np.dtype:
    """`dtype` if it is a plain number type; object, record and sub-array types are refused, so
    numpy never reads Python objects out of pickle bytes."""
    if (not isinstance(dtype, np.dtype) or dtype.kind not in PLAIN_DTYPE_KINDS or dtype.hasobject
            or dtype.fields is not None or dtype.subdtype is not None):
        raise pickle.UnpicklingError(f"refusing array type {dtype!r}")
    return dtype


def _byte_count(shape: object, dtype: np.dtype) -> int:
    """How many bytes an array of `shape` needs (Python ints: no overflow)."""
    if (not isinstance(shape, tuple) or len(shape) > 32
            or not all(isinstance(n, int) and n >= 0 for n in shape)):
        raise pickle.UnpicklingError(f"bad array shape {shape!r}")
    return math.prod(shape) * dtype.itemsize


def _new_dtype(spec: object, align: object = False, copy: object = True) -> np.dtype:
    """`numpy.dtype` as numpy pickles call it: a type code; always a copy, so that the BUILD that
    follows cannot change numpy's shared instance of the type."""
    if not isinstance(spec, (str, bytes)):
        raise pickle.UnpicklingError("unexpected dtype construction")
    return _plain_dtype(np.dtype(spec.decode("latin1") if isinstance(spec, bytes) else spec,
                                 bool(align), True))


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> np.ndarray:
    """numpy's protocol-5 `_frombuffer`, once the buffer holds exactly the bytes the shape needs."""
    if not isinstance(buffer, (bytes, bytearray)) or order not in ("C", "F"):
        raise pickle.UnpicklingError("unexpected array construction")
    if len(buffer) != _byte_count(shape, _plain_dtype(dtype)):
        raise pickle.UnpicklingError(f"an array of shape {shape} does not fit {len(buffer)} bytes")
    real = importlib.import_module("numpy._core.numeric")._frombuffer
    return real(buffer, dtype, shape, order)


def _encode(text: object, encoding: object = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles write bytes (latin1); no other codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected codecs.encode call")
    return text.encode("latin1")


# CIFAR-100's train file is one pickle of 50,000 images: five CIFAR-10 batches' worth, with three
# lists (file names, fine and coarse labels) where a batch has two. Written by Python 2 it takes
# ~200,000 operations, rewritten by Python 3 with protocol 2 ~450,000; memory stays below ~175 MB.
CIFAR100_TRAIN_PICKLE_OPS = 5 * MAX_PICKLE_OPS


def _counted(op: Any) -> Callable[[Any], None]:
    """`op`, counted against the unpickler's budget (MAX_PICKLE_OPS unless the file is larger)."""
    def run(self: _BatchUnpickler) -> None:
        self._ops += 1
        if self._ops > self._max_ops:
            raise pickle.UnpicklingError(f"more than {self._max_ops:,} pickle operations; a CIFAR "
                                         "file needs far fewer")
        op(self)
    return run


class _BatchUnpickler(pickle._Unpickler):
    """Unpickles CIFAR batches and refuses everything else (no arbitrary code execution).

    It is the pure-Python unpickler: the C one sizes its memo table by the largest index a pickle
    names, so 6 hostile bytes (LONG_BINPUT 667395525) make it allocate and clear 10 GB. And a
    bytearray may not claim more bytes than the whole pickle holds. Memory stays proportional to
    the file: every opcode counts against MAX_PICKLE_OPS, the bytes that calls make (`encode`)
    against the file's size, arrays are only ever views of the pickle's own bytes, and numpy's
    BUILD (`ndarray.__setstate__`) only runs on a fresh empty array, with a plain number type and
    exactly the bytes its shape needs: with an object type it would read Python objects out of a
    list and, given too short a list, crash the process.
    """

    def __init__(self, data: bytes, max_ops: int = MAX_PICKLE_OPS):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._size = len(data)
        self._ops, self._max_ops = 0, max_ops
        self._encoded = 0  # bytes made by _codecs.encode calls so far
        self._unbuilt: dict[int, np.ndarray] = {}  # arrays from _reconstruct not yet filled

    def _load_bytearray8(self) -> None:
        this: Any = self  # read, readinto and append are set per instance by the base class
        (size,) = struct.unpack("<Q", this.read(8))
        if size > self._size:
            raise pickle.UnpicklingError(f"a bytearray claims {size} bytes in a {self._size}-byte "
                                         "file")
        buffer = bytearray(size)
        this.readinto(buffer)
        this.append(buffer)

    def _load_build(self) -> None:
        this: Any = self
        state, inst = this.stack.pop(), this.stack[-1]
        if isinstance(inst, np.dtype):  # byte order only: (3, '<', None, None, None, -1, -1, 0)
            if (not isinstance(state, tuple) or len(state) != 8 or state[0] != 3
                    or state[1] not in ("<", ">", "|", "=") or state[2:5] != (None, None, None)):
                raise pickle.UnpicklingError("unexpected dtype state")
        elif self._unbuilt.pop(id(inst), None) is inst:
            if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
                raise pickle.UnpicklingError("unexpected array state")
            _, shape, dtype, fortran, raw = state
            if not isinstance(fortran, bool) or not isinstance(raw, (bytes, bytearray)):
                raise pickle.UnpicklingError("unexpected array state")
            if len(raw) != _byte_count(shape, _plain_dtype(dtype)):
                raise pickle.UnpicklingError(f"an array of shape {shape} and type {dtype} does "
                                             f"not fit {len(raw)} bytes")
        else:
            raise pickle.UnpicklingError(f"unexpected BUILD of {type(inst).__name__}")
        inst.__setstate__(state)

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = {
        key: _counted(op) for key, op in {**pickle._Unpickler.dispatch,
                                          pickle.BYTEARRAY8[0]: _load_bytearray8,
                                          pickle.BUILD[0]: _load_build}.items()}

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
        return {"_reconstruct": self._reconstruct, "_frombuffer": _frombuffer, "ndarray": _NDARRAY,
                "dtype": _new_dtype, "encode": self._encode}[name]

    def _reconstruct(self, subtype: object, shape: object, dtype: object) -> np.ndarray:
        """numpy's `_reconstruct` as numpy pickles use it: an empty array that BUILD then fills
        from the pickle's own bytes. Any other shape would allocate memory the file does not hold."""
        if subtype is not _NDARRAY or shape != (0,) or not isinstance(dtype, (bytes, str)):
            raise pickle.UnpicklingError("unexpected array construction")
        real = importlib.import_module("numpy._core.multiarray")._reconstruct
        array = real(np.ndarray, (0,), np.uint8)  # BUILD sets the real type, checked there
        self._unbuilt[id(array)] = array
        return array

    def _encode(self, text: object, encoding: object = "utf-8") -> bytes:
        data = _encode(text, encoding)
        self._encoded += len(data)
        if self._encoded > self._size:  # each call copies: a memoized string could be copied forever
            raise pickle.UnpicklingError("codecs.encode calls make more bytes than the file holds")
        return data


def load_batch(data: bytes, name: str, what: str = "CIFAR-10 batch",
               max_ops: int = MAX_PICKLE_OPS) -> dict[str, object]:
    """Unpickle one batch file (or CIFAR-100 file: `what`) safely; keys come back as str."""
    try:
        with warnings.catch_warnings():  # numpy deprecation notes about odd dtype arguments
            warnings.simplefilter("ignore")
            obj = _BatchUnpickler(data, max_ops).load()
    except Exception as exc:  # any failure to unpickle is a bad file, never a crash
        raise UserError(f"{name} is not a valid {what} file: {exc}") from exc
    if not isinstance(obj, dict):
        raise UserError(f"{name} is not a valid {what} file (not a dict)")
    return {k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k): v
            for k, v in obj.items()}


def _batch_arrays(batch: dict[str, object], name: str, num_classes: int,
                  label_key: str = "labels") -> tuple[np.ndarray, ...]:
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{name}: 'data' must be an array of shape (N, 3072)")
    if data.dtype != np.uint8:
        raise UserError(f"{name}: 'data' must be uint8, got {data.dtype}")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise UserError(f"{name}: '{label_key}' must be a list of integers") from exc
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
    classes = _label_names(meta, "label_names", 10, f"{origin}: batches.meta")
    raw = RawData(kind="cifar10-python", classes=classes)
    parts = [_batch_arrays(load_batch(files[n], n), n, 10) for n in TRAIN_BATCHES]
    raw.images["train"] = np.concatenate([p[0] for p in parts])
    raw.labels["train"] = np.concatenate([p[1] for p in parts])
    raw.images["test"], raw.labels["test"] = _batch_arrays(
        load_batch(files["test_batch"], "test_batch"), "test_batch", 10
    )
    return raw


def _label_names(meta: dict[str, object], key: str, count: int, where: str) -> list[str]:
    """The `count` class names a meta pickle lists under `key`: distinct, printable, short."""
    names = meta.get(key)
    if (not isinstance(names, list) or len(names) != count
            or not all(isinstance(n, (bytes, str)) for n in names)):
        raise UserError(f"{where} must list {count} {key}")
    classes = [_display(n.decode("utf-8", "surrogateescape") if isinstance(n, bytes) else n)
               for n in names]
    if len(set(classes)) != count or not all(0 < len(c) <= MAX_CLASS_NAME for c in classes):
        raise UserError(f"{where}: its {key} must be {count} distinct names of 1 to "
                        f"{MAX_CLASS_NAME} characters")
    return classes


def read_official_dir(path: Path) -> RawData:
    files = {}
    for name in ["batches.meta", *TRAIN_BATCHES, "test_batch"]:
        if (path / name).is_file():
            files[name] = read_file(path / name)
    return _official_from_files(files, str(path))


def _is_cifar100(names: set[str]) -> bool:
    """A CIFAR-100 set, by its files: two of meta, train and test (files, not split folders) make
    one, and the reader then names the third if it is missing."""
    return len(set(CIFAR100_FILES) & names) >= 2


def _cifar100_from_files(files: dict[str, bytes], origin: str, label_mode: str) -> RawData:
    """CIFAR-100's train and test pickles with the classes of `label_mode` (fine: 100, coarse: 20)."""
    missing = [n for n in CIFAR100_FILES if n not in files]
    if missing:
        raise UserError(f"{origin}: not a complete CIFAR-100 python set, missing {', '.join(missing)}")
    what = "CIFAR-100"
    meta = load_batch(files["meta"], "meta", what)
    classes = _label_names(meta, f"{label_mode}_label_names", LABEL_MODES[label_mode],
                           f"{origin}: meta")
    raw = RawData(kind="cifar100-python", classes=classes)
    for split, budget in (("train", CIFAR100_TRAIN_PICKLE_OPS), ("test", MAX_PICKLE_OPS)):
        batch = load_batch(files[split], split, what, budget)
        raw.images[split], raw.labels[split] = _batch_arrays(batch, split, len(classes),
                                                             f"{label_mode}_labels")
    return raw


def read_cifar100_dir(path: Path, label_mode: str = "fine") -> RawData:
    files = {name: read_file(path / name) for name in CIFAR100_FILES if (path / name).is_file()}
    return _cifar100_from_files(files, str(path), label_mode)


def read_file(path: Path) -> bytes:
    """The bytes of one input file, refusing anything larger than MAX_FILE_BYTES."""
    try:
        with path.open("rb") as handle:
            # read(n) sets n bytes aside before reading: ask for what the file holds, at most one
            # byte past the limit (so that a file over it is seen, even one that grew since)
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(min(size, MAX_FILE_BYTES) + 1)
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
    to be resized. Images over MAX_DECODE_PIXELS (by their header) are refused before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" and such: the pixels are fine
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                width, height = img.size
                if width * height > MAX_DECODE_PIXELS:
                    raise UserError(f"image {name} is {width}x{height} pixels, larger than "
                                    f"cifarlab decodes ({MAX_DECODE_PIXELS:,} pixels)")
                img.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))  # lets JPEG decode at reduced size
                img.load()
                _upright(img)
                rgb = _to_rgb(img)
    except UserError:
        raise
    except Exception as exc:  # image parsers raise many types on damaged input; all mean "bad file"
        raise UserError(f"cannot decode image {name}: {_reason(exc)}") from exc
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    # the size it was stored at: a 64 x 64 JPEG decodes at 32 x 32 by itself (draft), resized all the same
    return np.asarray(rgb, dtype=np.uint8), (width, height) != (IMAGE_SIZE, IMAGE_SIZE)


def _upright(img: Image.Image) -> None:
    """Turn a loaded image the way its EXIF Orientation says, as browsers and photo viewers show it:
    a phone stores a portrait photo sideways with Orientation 6. Damaged EXIF leaves it as stored."""
    with contextlib.suppress(Exception):  # EXIF parsers raise many types on damaged data
        ImageOps.exif_transpose(img, in_place=True)


def _grey_levels(img: Image.Image) -> np.ndarray:
    """A 32-bit integer or float grey image as uint8, every mode the same way: by the range its
    values fit, 0..1 (floats only), 0..255, 0..65535, else 0..max. A 16-bit mode (I;16) says its
    range itself. Not the PIL way, which clips floats at 255 (0..1 becomes black) and integers too."""
    array = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(array.max()) if array.size else 0.0
    if img.mode.startswith("I;16"):
        top = 65535.0
    elif img.mode == "F" and peak <= 1.0:
        top = 1.0
    else:
        top = next((t for t in (255.0, 65535.0) if peak <= t), peak)
    return np.clip(np.rint(array / top * 255.0), 0, 255).astype(np.uint8)


def _reason(exc: Exception) -> str:
    """Why PIL failed, in our words: its "cannot identify image file <_io.BytesIO object at 0x...>"
    names an object of ours, not the user's file."""
    if isinstance(exc, UnidentifiedImageError):
        return f"not an image in a format cifarlab reads ({', '.join(IMAGE_FORMATS)})"
    return str(exc) or type(exc).__name__


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (P, LA, RGBA, CMYK, I;16, F, ...) to RGB; transparency goes on white."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = Image.fromarray(_grey_levels(img))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


# Split folders, matched in any case (Train/, TEST/); valid/ and validation/ are val/ too.
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _split_of(path: str) -> str | None:
    """The split of ROOT/<split>/<class>/<image>, or None if the image is not under a split folder."""
    parts = PurePosixPath(path).parts
    return SPLIT_FOLDERS.get(parts[-3].lower()) if len(parts) >= 3 else None


def _parse_layout(paths: list[str], origin: str) -> dict[str, dict[str, list[str]]]:
    """{split: {class: [paths]}} for ROOT/{train,val,test}/<class>/* (or ROOT/<class>/*: train only)."""
    images = [p for p in paths if _is_image(p)]
    if not images:
        raise UserError(f"{origin}: no images found (.png, .jpg, .jpeg)")
    with_split = [p for p in images if _split_of(p)]
    if with_split and len(with_split) < len(images):
        outside = sorted(set(images) - set(with_split))
        warn(f"{origin}: ignored {len(outside)} image(s) outside the train/, val/ and test/ folders "
             f"(such as {outside[0]})")
    layout: dict[str, dict[str, list[str]]] = {}
    folders: dict[str, str] = {}  # split -> the folder it was found in
    for p in sorted(with_split or images):
        parts = PurePosixPath(p).parts
        if len(parts) < 2:
            raise UserError(f"{origin}: image {p} is not inside a class folder")
        split = _split_of(p) or "train"
        folder = "/".join(parts[:-2]) if with_split else ""
        if folders.setdefault(split, folder) != folder:  # e.g. Train/ and train/: never merged
            raise UserError(f"{origin}: both {folders[split]}/ and {folder}/ look like the {split} "
                            "split; keep one")
        layout.setdefault(split, {}).setdefault(_display(parts[-2]), []).append(p)
    if "train" not in layout:
        if set(layout) != {"test"}:
            found = ", ".join(f"{folder}/" for folder in folders.values())
            raise UserError(f"{origin}: found {found} but no train/ folder")
        # the official test set as images: enough to evaluate on
        if len(layout["test"]) < 2:
            raise UserError(f"{origin}: need at least 2 class folders in test/, found {len(layout['test'])}")
        return layout
    train_classes = set(layout["train"])
    for split in layout.keys() - {"train"}:
        where = PurePosixPath(folders[split]).name
        if train_classes - set(layout[split]):
            missing = ", ".join(sorted(train_classes - set(layout[split])))
            raise UserError(f"{origin}: class folder(s) {missing} in train/ but missing from {where}/")
        if set(layout[split]) - train_classes:
            extra = ", ".join(sorted(set(layout[split]) - train_classes))
            raise UserError(f"{origin}: class folder(s) {extra} in {where}/ but not in train/")
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


def list_files(root: Path) -> list[str]:
    """The files under `root` (links to files too; not FIFOs or devices), as sorted relative POSIX
    paths. A loop, not recursion: pathlib's rglob recurses and a tree ~1000 folders deep ends in
    RecursionError. Links to folders are not followed (no loops); more than MAX_DEPTH folders deep
    or MAX_ENTRIES entries is a UserError."""
    found, pending, entries = [], [(root, 0)], 0
    while pending:
        folder, depth = pending.pop()
        try:
            with os.scandir(folder) as listing:
                children = list(listing)
        except OSError as exc:
            raise UserError(f"cannot read {folder}: {exc.strerror or exc}") from exc
        entries += len(children)
        if entries > MAX_ENTRIES:
            raise UserError(f"{root} holds more than {MAX_ENTRIES:,} files and folders; cifarlab "
                            "reads image folders of CIFAR size")
        for child in children:
            if child.is_dir(follow_symlinks=False):
                if depth >= MAX_DEPTH:
                    raise UserError(f"{root} has folders more than {MAX_DEPTH} levels deep "
                                    f"({child.path}); expected ROOT/<split>/<class>/<image>")
                pending.append((Path(child.path), depth + 1))
            else:
                try:
                    is_file = child.is_file()  # follows a link; a loop or a dangling one is not
                except OSError:
                    is_file = False
                if is_file:
                    found.append(Path(child.path).relative_to(root).as_posix())
    return sorted(found)


def read_image_folder(root: Path) -> RawData:
    layout = _parse_layout(list_files(root), str(root))
    return _decode_layout(layout, lambda p: read_file(root / p), "image-folder")


def _read_tar(path: Path, label_mode: str = "fine") -> RawData:
    """Read a tar archive in one forward pass (seeking back in a .tgz means decompressing again)."""
    official = {"batches.meta", *TRAIN_BATCHES, "test_batch", *CIFAR100_FILES}
    batch_files: dict[str, bytes] = {}
    images: dict[str, bytes] = {}
    total = 0
    with _TarFile.open(path, "r:*") as tar:
        for count in itertools.count(1):
            member = tar.next()
            if member is None:
                break
            tar.members.clear()  # type: ignore[attr-defined]  # tarfile keeps each header (~500 bytes)
            if count > MAX_ENTRIES:
                raise UserError(f"{path} has more than {MAX_ENTRIES:,} entries; extract it and pass "
                                "the folder")
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
    if _is_cifar100(set(batch_files)) and TRAIN_BATCHES[0] not in batch_files:
        raw = _cifar100_from_files(batch_files, str(path), label_mode)
        _check_md5(path, CIFAR100_MD5, "CIFAR-100")
        return raw
    one_label_set(label_mode, path)
    if TRAIN_BATCHES[0] in batch_files:
        raw = _official_from_files(batch_files, str(path))
        _check_md5(path, OFFICIAL_MD5, "CIFAR-10")
        return raw
    layout = _parse_layout(list(images), str(path))
    return _decode_layout(layout, images.__getitem__, "image-folder-archive")


def _check_md5(path: Path, expected: str, name: str) -> None:
    if file_md5(path) != expected:
        warn(f"{path.name} does not match the official {name} MD5 ({expected}); "
             "its structure is valid, so it is used")


_PlainTarInfo: Any = tarfile.TarInfo  # typeshed does not declare the methods overridden here


class _TarInfo(_PlainTarInfo):
    """A tar header that refuses meta headers (long names, PAX) too large, too many or chained too
    deep, before tarfile reads their bodies into memory, and sparse members, whose maps tarfile
    also builds in memory (images are never sparse)."""

    def _proc_member(self, tar: Any) -> Any:
        if self.type not in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                             tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
            tar.meta_chain = 0
            return super()._proc_member(tar)
        tar.meta_bytes += self.size
        tar.meta_chain += 1
        if self.size > MAX_META_BYTES:
            problem = f"a tar header claims {self.size:,} bytes of file name or PAX data"
        elif tar.meta_bytes > MAX_ARCHIVE_META_BYTES:
            problem = f"more than {MAX_ARCHIVE_META_BYTES >> 20} MB of file-name and PAX headers"
        elif tar.meta_chain > MAX_META_CHAIN:
            problem = f"more than {MAX_META_CHAIN} file-name or PAX headers in a row"
        else:
            return super()._proc_member(tar)
        raise UserError(f"{tar.name}: {problem}; real archives need far less")

    def _refuse_sparse(self, *args: Any) -> Any:
        raise UserError("a tar archive with sparse members: not an image folder (images are "
                        "never sparse)")

    _proc_sparse = _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


class _TarFile(tarfile.TarFile):
    tarinfo = _TarInfo
    meta_bytes = 0  # meta-header bytes read so far
    meta_chain = 0  # meta headers in a row so far


def _check_member(name: str, size: int, total: int, archive: Path) -> None:
    _check_size(size, f"{archive}: member {name}")
    if total > MAX_ARCHIVE_BYTES:
        raise UserError(f"{archive} holds more than {MAX_ARCHIVE_BYTES >> 30} GB of images; "
                        "extract it and pass the folder")


def _read_zip(path: Path, label_mode: str = "fine") -> RawData:
    official = {"batches.meta", *TRAIN_BATCHES, "test_batch"}
    with zipfile.ZipFile(path) as archive:
        # Windows tools (PowerShell's Compress-Archive) write train\cat\0.png: a backslash is a
        # separator here. (Not ZipInfo.is_dir(), which raises IndexError on an empty name.)
        infos = {i.filename.replace("\\", "/"): i for i in archive.infolist()}
        infos = {name: info for name, info in infos.items() if name and not name.endswith("/")}
        if len(infos) > MAX_ENTRIES:
            raise UserError(f"{path} has more than {MAX_ENTRIES:,} entries; extract it and pass "
                            "the folder")
        bases = {PurePosixPath(n).name for n in infos}
        if TRAIN_BATCHES[0] in bases or _is_cifar100(bases):
            cifar100 = TRAIN_BATCHES[0] not in bases
            names = set(CIFAR100_FILES) if cifar100 else official
            wanted = [n for n in infos if PurePosixPath(n).name in names]
            files = dict(zip((PurePosixPath(n).name for n in wanted),
                             _read_members(archive, [infos[n] for n in wanted], path), strict=True))
            if cifar100:
                return _cifar100_from_files(files, str(path), label_mode)
            one_label_set(label_mode, path)
            return _official_from_files(files, str(path))
        one_label_set(label_mode, path)
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
