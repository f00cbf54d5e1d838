"""Property-based tests of everything that reads untrusted files: each input either loads
correctly or raises UserError. Never another exception, a hang, or memory the file does not justify.

A few dozen examples per property keep this file at a few seconds; benchmarks/fuzz_readers.py
runs the long version.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifarlab import checkpoint, sources
from cifarlab.data import load_dataset
from cifarlab.errors import UserError
from cifarlab.sources import decode_image, load_batch, read_source
from conftest import png_bytes, write_image_folder

FAST = settings(max_examples=30, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def loads_or_user_error(read: Callable[[], Any]) -> Any:
    """The result of `read()`, or None if it raised UserError; anything else fails the test."""
    try:
        return read()
    except UserError as exc:
        assert str(exc)  # a message a user can act on
        return None


def read_batch(data: bytes) -> tuple[np.ndarray, ...]:
    return sources._batch_arrays(load_batch(data, "batch"), "batch", 10)


def assert_valid(raw: sources.RawData | None) -> None:
    if raw is None:
        return
    for split, images in raw.images.items():
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
        assert raw.labels[split].shape == (len(images),)
        assert raw.labels[split].min() >= 0 and raw.labels[split].max() < len(raw.classes)


@pytest.fixture
def small_peak() -> Iterator[None]:
    """Fail if the test allocates more than 64 MB at once (numpy reports to tracemalloc)."""
    tracemalloc.start()
    yield
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 << 20, f"peak allocation {peak >> 20} MB"


# ---------------------------------------------------------------------------------------------
# Official batch pickles

VALID_BATCH = pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 5, 9]}, 2)


@FAST
@given(st.binary(max_size=3000))
def test_batch_random_bytes(data: bytes) -> None:
    loads_or_user_error(lambda: read_batch(data))


@FAST
@given(st.integers(0, len(VALID_BATCH) - 1), st.lists(st.integers(0, 8 * len(VALID_BATCH) - 1),
                                                      max_size=4))
def test_batch_truncated_or_flipped(cut: int, flips: list[int]) -> None:
    data = bytearray(VALID_BATCH)
    for bit in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    loads_or_user_error(lambda: read_batch(bytes(data[:cut])))


@FAST
@given(n=st.integers(0, 4),
       shape=st.sampled_from(["ok", "chw", "short", "flat", "3d"]),
       dtype=st.sampled_from([np.uint8, np.int64, np.float32, np.uint16, object]),
       labels=st.one_of(st.lists(st.integers(-2**70, 2**70), max_size=5),
                        st.lists(st.integers(-2, 12), max_size=5),
                        st.sampled_from([None, "abc", 3.5, [[1]], [1.5, 2.5]])),
       keys=st.sampled_from([(b"data", b"labels"), ("data", "labels"), (b"data",), (1, 2)]),
       protocol=st.sampled_from([2, 4, 5]))
def test_batch_wrong_shapes_dtypes_labels(n: int, shape: str, dtype: Any, labels: Any,
                                          keys: tuple[Any, ...], protocol: int) -> None:
    dims = {"ok": (n, 3072), "chw": (n, 3, 32, 32), "short": (n, 100), "flat": (3072,),
            "3d": (n, 3072, 1)}[shape]
    data = np.zeros(dims, dtype=dtype)
    blob = pickle.dumps(dict(zip(keys, (data, labels), strict=False)), protocol=protocol)
    result = loads_or_user_error(lambda: read_batch(blob))
    if result is not None:  # then it must really be a valid batch
        images, label_array = result
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
        assert label_array.shape == (n,) and all(0 <= x <= 9 for x in label_array)


class Call:
    """Pickles as `func(*args)`: how a hostile pickle asks for anything."""

    def __init__(self, func: Any, *args: Any):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _reconstruct() -> Any:
    from numpy._core.multiarray import _reconstruct

    return _reconstruct


@pytest.mark.parametrize("make", [
    lambda: pickle.dumps({b"data": Call(_reconstruct(), np.ndarray, (10**6, 3072), b"B"),
                          b"labels": Call(_reconstruct(), np.ndarray, (10**6,), b"b")}, 2),
    lambda: pickle.dumps({b"data": Call(np.ndarray, (10**6, 3072), np.uint8)}, 2),
    lambda: pickle.dumps({b"data": Call(__import__("_codecs").encode, "x" * 100, "zlib")}, 2),
    lambda: pickle.dumps(Call(os.system, "touch pwned-by-pickle"), 2),
    # NONE, LONG_BINPUT 667395525, STOP: the C unpickler would allocate a 10 GB memo table
    lambda: b"\x80\x02Nr" + (667395525).to_bytes(4, "little") + b".",
    # BYTEARRAY8 claiming 2 GB
    lambda: b"\x80\x05\x96" + (2**31).to_bytes(8, "little") + b"\0" * 16 + b".",
], ids=["huge-reconstruct", "ndarray-call", "codec", "os-system", "memo-index", "bytearray8"])
def test_hostile_pickles_allocate_nothing_and_run_nothing(make: Callable[[], bytes],
                                                         small_peak: None, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blob = make()
    assert len(blob) < 500
    with pytest.raises(UserError, match="not a valid CIFAR-10 batch"):
        read_batch(blob)
    assert not (tmp_path / "pwned-by-pickle").exists()


class Built:
    """Pickles as numpy does an array: `_reconstruct(ndarray, (0,), 'b')`, then BUILD with `state`."""

    def __init__(self, state: tuple[Any, ...]):
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return _reconstruct(), (np.ndarray, (0,), b"b"), self.state


def object_dtype_pickles() -> list[bytes]:
    """BUILDs that make numpy read Python objects, or more bytes than the pickle holds."""
    states = [
        (1, (1,), np.dtype("O"), False, []),  # reads past the list: SIGSEGV before issue 12
        (1, (2,), np.dtype("O"), False, [None]),
        (1, (1,), np.dtype([("a", "O")]), False, b"\0" * 8),
        (1, (1,), np.dtype(("u1", (4,))), False, b"\0"),
        (1, (10**6, 3072), np.dtype("u1"), False, b"\0" * 16),
        (1, (-1,), np.dtype("u1"), False, b""),
        (1, (1,), "not a dtype", False, b"\0"),
        (1, (4,), np.dtype("u1"), False, [1, 2, 3, 4]),
    ]
    return [pickle.dumps({b"data": Built(state), b"labels": [0]}, 2) for state in states]


@pytest.mark.parametrize("blob", object_dtype_pickles(), ids=[
    "object-short-list", "object", "object-field", "subarray", "huge", "negative", "not-a-dtype", "list-raw"])
def test_object_dtypes_and_short_buffers_are_refused(blob: bytes, small_peak: None) -> None:
    with pytest.raises(UserError, match="not a valid CIFAR-10 batch"):
        read_batch(blob)


@pytest.mark.slow
def test_object_dtype_batch_is_one_line_not_a_crash(tmp_path: Path) -> None:
    """Issue 12: in-process, the crash would take pytest down with it, so run the CLI."""
    meta = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, 2)
    bad = object_dtype_pickles()[0]
    files = {"cifar-10-batches-py/batches.meta": meta, "cifar-10-batches-py/test_batch": bad}
    files.update({f"cifar-10-batches-py/data_batch_{i}": bad for i in range(1, 6)})
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(tgz_of(files))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "CIFARLAB_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "cifarlab", "data", "--data",
                           str(tmp_path / "cifar-10-python.tar.gz")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, (done.returncode, done.stderr[-500:])
    assert "refusing array type" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("opcode", [b"]", b"}", b"(", b")", b"N"],
                         ids=["list", "dict", "mark", "tuple", "none"])
def test_opcode_floods_stay_small(opcode: bytes, small_peak: None) -> None:
    """One byte of pickle (an empty list, dict, mark, tuple) becomes a ~70-byte object: 2 MB of
    them took 143 MB before issue 12. The opcode budget stops them."""
    with pytest.raises(UserError, match="pickle operations"):
        read_batch(b"\x80\x02" + opcode * 2_000_000 + b".")


def test_memoized_string_cannot_be_encoded_forever(small_peak: None) -> None:
    """`_codecs.encode` copies: calling it again and again on one memoized 1 MB string."""
    encode = __import__("_codecs").encode
    text = "x" * (1 << 20)
    blob = pickle.dumps([Call(encode, text, "latin1") for _ in range(200)], 2)
    assert len(blob) < 2 << 20
    with pytest.raises(UserError, match="more bytes than the file holds"):
        read_batch(blob)


# ---------------------------------------------------------------------------------------------
# Images

MODES = ["1", "L", "P", "LA", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "I;16", "I;16B",
         "F", "RGBX"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


def encode(mode: str, fmt: str, width: int, height: int, seed: int) -> bytes | None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    image = rgb.convert("L").convert(mode) if mode[0] in "IF" else rgb.convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):  # this format cannot hold this mode
        return None
    return buffer.getvalue()


@FAST
@given(st.sampled_from(MODES), st.sampled_from(FORMATS), st.integers(1, 70), st.integers(1, 70),
       st.integers(0, 100))
def test_images_of_any_mode_format_and_size_decode(mode: str, fmt: str, width: int, height: int,
                                                   seed: int) -> None:
    data = encode(mode, fmt, width, height, seed)
    if data is None:
        return
    array, resized = decode_image(data, f"odd.{fmt.lower()}")
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8
    assert resized == ((width, height) != (32, 32))


@pytest.mark.parametrize("mode, fmt, value", [
    ("P", "PNG", 128), ("LA", "PNG", 128), ("CMYK", "JPEG", 128), ("I;16", "PNG", 128 * 257),
    ("I;16", "TIFF", 128 * 257), ("F", "TIFF", 128.0), ("F", "TIFF", 0.502), ("I", "TIFF", 128),
    ("I", "TIFF", 128 * 257),
])
def test_odd_modes_keep_their_content(mode: str, fmt: str, value: float) -> None:
    """A mid-grey image in any mode decodes to mid-grey, not black, white or noise: float images in
    0..1 (they decoded black before issue 12) as well as 0..255, 32-bit integers in 0..255 (white)."""
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        image = Image.fromarray(np.full((32, 32), value, dtype))
    else:
        image = Image.new("L", (32, 32), int(value)).convert(mode)
    assert image.mode == mode
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    array, _ = decode_image(buffer.getvalue(), "grey")
    assert abs(float(array.mean()) - 128) < 3, array.mean()


@FAST
@given(st.binary(max_size=2000))
def test_image_random_bytes(data: bytes) -> None:
    loads_or_user_error(lambda: decode_image(data, "x.png"))


@FAST
@given(st.sampled_from(["PNG", "JPEG", "GIF", "TIFF"]), st.data())
def test_image_truncated_or_flipped(fmt: str, data: st.DataObject) -> None:
    blob = bytearray(encode("RGB", fmt, 20, 20, 0) or b"")
    cut = data.draw(st.integers(0, len(blob)))
    for bit in data.draw(st.lists(st.integers(0, 8 * len(blob) - 1), max_size=6)):
        blob[bit // 8] ^= 1 << (bit % 8)
    loads_or_user_error(lambda: decode_image(bytes(blob[:cut]), "x"))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds almost none: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 99))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(8000, 8000), (30000, 30000), (2**31 - 1, 1), (0, 5)])
def test_png_bombs_are_refused_before_decoding(width: int, height: int, small_peak: None) -> None:
    with pytest.raises(UserError, match="larger than cifarlab decodes|cannot decode image"):
        decode_image(png_header_only(width, height), "bomb.png")


# ---------------------------------------------------------------------------------------------
# Archives and folders


@pytest.fixture(scope="module")
def folder_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = write_image_folder(tmp_path_factory.mktemp("arch") / "f", ["a", "b"], n_train=2,
                              n_test=1)
    tgz, tar, zipped = io.BytesIO(), io.BytesIO(), io.BytesIO()
    for handle, mode in ((tgz, "w:gz"), (tar, "w")):
        with tarfile.open(fileobj=handle, mode=mode) as archive:
            archive.add(root, arcname="f")
    with zipfile.ZipFile(zipped, "w") as archive:
        for file in sorted(root.rglob("*.png")):
            archive.write(file, f"f/{file.relative_to(root)}")
    return {".tgz": tgz.getvalue(), ".tar": tar.getvalue(), ".zip": zipped.getvalue()}


@FAST
@given(data=st.binary(max_size=1500),
       suffix=st.sampled_from([".tgz", ".tar.gz", ".tar", ".zip", ".bin", ""]))
def test_archive_random_bytes(data: bytes, suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"data{suffix}"
    path.write_bytes(data)
    assert_valid(loads_or_user_error(lambda: read_source(path)))


@settings(FAST, max_examples=60)
@given(suffix=st.sampled_from([".tgz", ".tar", ".zip"]), data=st.data())
def test_archive_truncated_or_flipped(suffix: str, data: st.DataObject, tmp_path: Path,
                                      folder_archives: dict[str, bytes]) -> None:
    blob = bytearray(folder_archives[suffix])
    if suffix == ".tgz" and data.draw(st.booleans()):  # damage the tar inside the gzip
        inner = bytearray(gzip.decompress(bytes(blob)))
        for bit in data.draw(st.lists(st.integers(0, 8 * len(inner) - 1), max_size=6)):
            inner[bit // 8] ^= 1 << (bit % 8)
        blob = bytearray(gzip.compress(bytes(inner)))
    else:
        for bit in data.draw(st.lists(st.integers(0, 8 * len(blob) - 1), max_size=6)):
            blob[bit // 8] ^= 1 << (bit % 8)
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    path = tmp_path / f"data{suffix}"
    path.write_bytes(bytes(blob))
    assert_valid(loads_or_user_error(lambda: read_source(path)))


def zip_of(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tgz_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_gzip_and_zip_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        small_peak: None) -> None:
    monkeypatch.setattr(sources, "MAX_FILE_BYTES", 1 << 20)  # the same check, at a test's scale
    image = png_bytes(np.zeros((32, 32, 3), np.uint8))
    bomb = {"r/train/a/0.png": b"\0" * (8 << 20), "r/train/b/0.png": image}
    for name, blob in (("bomb.tgz", tgz_of(bomb)), ("bomb.zip", zip_of(bomb))):
        assert len(blob) < 100_000
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(UserError, match="larger than 1 MB"):
            read_source(tmp_path / name)


def gzipped(parts: Iterator[bytes]) -> bytes:
    """A .gz of the concatenated parts, compressed as they come (no big buffer in the test)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    return b"".join(packer.compress(part) for part in parts) + packer.flush()


def tar_header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(tarfile.GNU_FORMAT)


def zeros(megabytes: int) -> Iterator[bytes]:
    for _ in range(megabytes):
        yield bytes(1 << 20)


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                                  tarfile.XGLTYPE], ids=["longname", "longlink", "pax", "pax-global"])
def test_tar_meta_header_bombs_are_refused_before_reading(kind: bytes, tmp_path: Path,
                                                          small_peak: None) -> None:
    """tarfile reads a meta header's body into memory before the member it describes: an 80 MB
    claim, 400 KB gzipped (600 MB took 605 MB of memory before issue 12)."""
    path = tmp_path / "meta.tgz"
    path.write_bytes(gzipped(itertools.chain([tar_header("././@LongLink", kind, 80 << 20)], zeros(80))))
    assert path.stat().st_size < 400_000
    with pytest.raises(UserError, match="a tar header claims 83,886,080 bytes"):
        read_source(path)


def test_tar_meta_header_chains_and_sparse_members_are_refused(tmp_path: Path) -> None:
    image = png_bytes(np.zeros((32, 32, 3), np.uint8))
    pax = b"".join(tar_header("././@PaxHeader", tarfile.XHDTYPE, 512) + b"9 a=bcd\n".ljust(512, b"\0")
                   for _ in range(2000))  # would recurse 2000 deep in tarfile
    sparse = tar_header("r/train/a/0.png", tarfile.GNUTYPE_SPARSE, 0)
    for name, blob in (("chain.tgz", pax), ("sparse.tgz", sparse)):
        (tmp_path / name).write_bytes(gzipped(iter([blob, tar_header("r/train/a/1.png", tarfile.REGTYPE,
                                                                     len(image)), image])))
        with pytest.raises(UserError, match="in a row|sparse"):
            read_source(tmp_path / name)


def test_tar_entry_count_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """300,000 empty entries (1.5 MB gzipped) took 137 MB and 10 s before issue 12."""
    monkeypatch.setattr(sources, "MAX_ENTRIES", 100)
    path = tmp_path / "many.tgz"
    path.write_bytes(gzipped(tar_header(f"e{i}", tarfile.REGTYPE, 0) for i in range(200)))
    with pytest.raises(UserError, match="more than 100 entries"):
        read_source(path)


def test_decode_cap_applies_before_jpeg_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    """draft() decodes a JPEG at 1/8 scale, but a progressive one still holds all its coefficients:
    a 144-megapixel one of 845 KB used 423 MB. The cap is on the size in the header."""
    monkeypatch.setattr(sources, "MAX_DECODE_PIXELS", 1_000_000)
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1000), (90, 120, 200)).save(buffer, format="JPEG", progressive=True)
    with pytest.raises(UserError, match="2000x1000 pixels, larger than cifarlab decodes"):
        decode_image(buffer.getvalue(), "big.jpg")


def patch_zip(blob: bytes, edit: Callable[[bytearray, int], None]) -> bytes:
    """Apply `edit` at every central-directory entry of a zip."""
    data = bytearray(blob)
    start = data.find(b"PK\x01\x02")
    while start >= 0:
        edit(data, start)
        start = data.find(b"PK\x01\x02", start + 1)
    return bytes(data)


@pytest.mark.parametrize("damage", ["encrypted", "deflate64", "lies-about-size"])
def test_odd_zips(damage: str, tmp_path: Path) -> None:
    image = png_bytes(np.zeros((32, 32, 3), np.uint8))
    files = {"r/train/a/0.png": image, "r/train/b/0.png": image}

    def edit(data: bytearray, at: int) -> None:
        if damage == "encrypted":
            data[at + 8] |= 1
        elif damage == "deflate64":
            data[at + 10:at + 12] = (9).to_bytes(2, "little")
        elif damage == "lies-about-size":
            data[at + 24:at + 28] = (10).to_bytes(4, "little")

    path = tmp_path / "odd.zip"
    path.write_bytes(patch_zip(zip_of(files), edit))
    with pytest.raises(UserError):
        read_source(path)


def test_folder_with_loops_fifos_and_dangling_links_loads(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "f", ["a", "b"], n_train=2)
    cls = root / "train" / "a"
    (cls / "self.png").symlink_to("self.png")  # a symlink loop
    (cls / "up").symlink_to("..")  # a folder loop
    (cls / "gone.png").symlink_to(tmp_path / "missing.png")
    os.mkfifo(cls / "pipe.png")  # reading it would block forever
    raw = read_source(root)
    assert raw.images["train"].shape == (4, 32, 32, 3)


def test_zero_byte_image_is_named(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "f", ["a", "b"], n_train=2)
    (root / "train" / "a" / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"cannot decode image train/a/empty\.png"):
        read_source(root)


@pytest.mark.parametrize("where", ["file", "class"])
def test_non_utf8_names(where: str, tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    root = write_image_folder(tmp_path / "f", ["a", "b"], n_train=2)
    image = (root / "train" / "a" / "0000.png").read_bytes()
    parent = os.fsencode(root / "train") + (b"/a/\xff\xfe.png" if where == "file" else b"/caf\xe9")
    if where == "class":
        os.makedirs(parent)
        parent += b"/0.png"
    with open(parent, "wb") as handle:
        handle.write(image)
    raw = read_source(root)
    assert len(raw.images["train"]) == 5
    json.dumps(raw.classes, ensure_ascii=False).encode("utf-8")  # printable and storable
    if where == "class":
        assert raw.classes == ["a", "b", "caf\\udce9"]
    for _ in range(2):  # decoded, then from the cache (its key hashes the file names)
        dataset = load_dataset(root, quiet=True)
        assert dataset.classes == raw.classes and len(dataset.splits["train"]) == 5


def test_zero_byte_and_huge_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("empty.tgz", "empty.zip", "empty"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(UserError):
            read_source(tmp_path / name)
    folder = tmp_path / "official"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"\0" * 2000)
    monkeypatch.setattr(sources, "MAX_FILE_BYTES", 1000)
    with pytest.raises(UserError, match="larger than"):
        read_source(folder)


# ---------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    buffer = io.BytesIO()
    torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "model": model.state_dict(),
                "epoch": 1, "history": [{"val_acc": 0.5}]}, buffer)
    return buffer.getvalue()


@FAST
@given(data=st.data())
def test_checkpoint_damage_is_a_user_error(data: st.DataObject, checkpoint_bytes: bytes,
                                           tmp_path: Path) -> None:
    blob = bytearray(checkpoint_bytes)
    for bit in data.draw(st.lists(st.integers(0, 8 * len(blob) - 1), max_size=8)):
        blob[bit // 8] ^= 1 << (bit % 8)
    blob = blob[:data.draw(st.integers(0, len(blob)))]
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(bytes(blob))
    result = loads_or_user_error(lambda: checkpoint.load(path, checkpoint.CHECKPOINT_FORMAT))
    assert result is None or result["format"] == checkpoint.CHECKPOINT_FORMAT


def rezipped(blob: bytes, replace: dict[str, tuple[bytes, int]]) -> bytes:
    """The zip `blob` (a torch.save file) with some records replaced: {name: (data, method)}."""
    source, out = zipfile.ZipFile(io.BytesIO(blob)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in source.namelist():
            data, method = replace.get(name.split("/", 1)[1], (source.read(name), zipfile.ZIP_STORED))
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return out.getvalue()


@pytest.mark.parametrize("bomb, message", [
    ("deflated-record", "declares 67,108,864 bytes stored in"),
    ("pickle-flood", "cifarlab writes less than 2 MB"),
    ("many-records", "records; cifarlab files have a few hundred"),
    ("legacy-format", "not a zip archive"),
])
def test_model_file_bombs_are_refused_before_torch_load(bomb: str, message: str, checkpoint_bytes: bytes,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.load allocates a record's declared size and inflates it before checking it: a 307 KB
    model.pt cost 301 MB before issue 12. Serve, evaluate, predict, export and --resume all load
    through checkpoint.load."""
    if bomb == "deflated-record":
        blob = rezipped(checkpoint_bytes, {"data/0": (bytes(64 << 20), zipfile.ZIP_DEFLATED)})
    elif bomb == "pickle-flood":
        blob = rezipped(checkpoint_bytes, {"data.pkl": (b"\x80\x02" + b"]" * (3 << 20) + b".",
                                                        zipfile.ZIP_STORED)})
    elif bomb == "many-records":
        monkeypatch.setattr(checkpoint, "MAX_RECORDS", 5)
        blob = checkpoint_bytes
    else:
        buffer = io.BytesIO()
        torch.save({"format": checkpoint.CHECKPOINT_FORMAT}, buffer, _use_new_zipfile_serialization=False)
        blob = buffer.getvalue()

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load reached")

    monkeypatch.setattr(checkpoint.torch, "load", never)
    path = tmp_path / "model.pt"
    path.write_bytes(blob)
    with pytest.raises(UserError, match=message):
        checkpoint.load(path, checkpoint.CHECKPOINT_FORMAT)


# ---------------------------------------------------------------------------------------------
# Nested archives


def archive_of(kind: str, files: dict[str, bytes]) -> bytes:
    if kind == "zip":
        return zip_of(files)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if kind == "tgz" else "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@settings(FAST, max_examples=60)
@given(outer=st.sampled_from(["tar", "tgz", "zip"]), inner=st.sampled_from(["tar", "tgz", "zip"]),
       member=st.sampled_from(["root/notes.docx", "root/train/a/inner.png", "root/extra.zip",
                               "root/train/data_batch_1", "cifar-10-batches-py/batches.meta"]),
       suffix=st.sampled_from(["", ".tar", ".tgz", ".zip"]))
def test_nested_archives(outer: str, inner: str, member: str, suffix: str, tmp_path: Path) -> None:
    """An archive inside an archive is only ever a member: loaded as the folder it sits in, or a
    UserError; never read as the outer archive (a .tar ending in a zip passed for that zip)."""
    image = png_bytes(np.zeros((32, 32, 3), np.uint8))
    def folder(classes: str) -> dict[str, bytes]:
        return {f"root/{split}/{cls}/0.png": image for split in ("train", "test") for cls in classes}

    files = {**folder("ab"), member: archive_of(inner, folder("cd"))}  # last: where zips are found
    path = tmp_path / f"data{suffix}"
    path.write_bytes(archive_of(outer, files))
    raw = loads_or_user_error(lambda: read_source(path))
    assert_valid(raw)
    tar_like = {"tar", "tgz"}
    right_reader = suffix in ("", f".{outer}") or (outer in tar_like and suffix[1:] in tar_like)
    if right_reader and not member.endswith((".png", "data_batch_1")):
        assert raw is not None and raw.classes == ["a", "b"], (outer, inner, member, suffix)


# ---------------------------------------------------------------------------------------------
# Slow sockets: `cifarlab serve` on 127.0.0.1 with slow and broken clients


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, list[Any]]]:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from cifarlab.networks import create_model
    from cifarlab.serve import Limits, create_app
    from conftest import live_server

    folder = tmp_path_factory.mktemp("serve")
    model = create_model("base", 2, [128.0] * 3, [64.0] * 3)
    checkpoint.save(folder / "model.pt", checkpoint.model_record(
        model, "base", ["a", "b"], {}, {}, 0, "final"))
    limits = Limits(max_concurrency=2, header_seconds=0.5, upload_seconds=1.0)
    clients: list[Any] = []
    with live_server(create_app(folder / "model.pt", limits), limits=limits) as url:
        yield int(url.rsplit(":", 1)[1]), clients
        for client in clients:
            client.close()


HEADS = [b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
         b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4000\r\n\r\n",
         b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc",
         b"GET /health HTTP/1.1\r\nHost: attacker.example\r\n\r\n"]


@settings(FAST, max_examples=25)
@given(head=st.sampled_from(HEADS), cut=st.floats(0, 1), junk=st.binary(max_size=40),
       step=st.integers(1, 32), pause=st.sampled_from([0.0, 0.01, 0.03]))
def test_slow_and_broken_clients_leave_the_server_answering(
        head: bytes, cut: float, junk: bytes, step: int, pause: float,
        slow_server: tuple[int, list[Any]]) -> None:
    """A client that sends part of a request, a few bytes at a time, and then nothing, stays open
    beside the others: a normal client still gets /health at once."""
    import socket
    import time

    port, clients = slow_server
    data = head[:int(len(head) * cut)] + junk
    client = socket.create_connection(("127.0.0.1", port), timeout=2)
    clients.append(client)
    with contextlib.suppress(OSError):
        for start in range(0, len(data), step):
            client.sendall(data[start:start + step])
            time.sleep(pause)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as normal:
        normal.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := normal.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:80]
