"""Every supported source format, and the bad inputs each must reject with one clear error."""

from __future__ import annotations

import io
import pickle
import pickletools
import tarfile
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cifarlab import sources
from cifarlab.errors import UserError
from cifarlab.sources import decode_image, load_batch, read_source
from conftest import (
    CIFAR100_COARSE,
    CIFAR100_FINE,
    CLASSES,
    cifar100_batch,
    png_bytes,
    write_cifar100_dir,
    write_image_folder,
    write_official_dir,
    write_tar,
)


def test_official_folder(official_dir: Path) -> None:
    raw = read_source(official_dir)
    assert raw.kind == "cifar10-python"
    assert raw.classes == CLASSES
    assert raw.images["train"].shape == (100, 32, 32, 3)
    assert raw.images["test"].shape == (20, 32, 32, 3)
    assert raw.images["train"].dtype == np.uint8
    assert raw.labels["train"].min() >= 0 and raw.labels["train"].max() <= 9


def test_official_parent_folder_is_accepted(official_dir: Path) -> None:
    assert read_source(official_dir.parent).images["train"].shape[0] == 100


def test_official_pixels_keep_channel_order(tmp_path: Path) -> None:
    folder = write_official_dir(tmp_path, per_batch=4)
    batch = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes")
    red_plane = batch[b"data"][0, :1024].reshape(32, 32)
    assert np.array_equal(read_source(folder).images["train"][0, :, :, 0], red_plane)


def test_official_archive_warns_on_md5_mismatch(official_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    archive = write_tar(official_dir, tmp_path / "cifar-10-python.tar.gz")
    raw = read_source(archive)
    assert raw.images["train"].shape[0] == 100
    assert "does not match the official CIFAR-10 MD5" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["test_batch", "data_batch_3", "batches.meta"])
def test_official_incomplete(official_dir: Path, missing: str) -> None:
    (official_dir / missing).unlink()
    with pytest.raises(UserError, match=missing):
        read_source(official_dir)


def test_official_bad_labels(official_dir: Path) -> None:
    batch = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 12]}
    (official_dir / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UserError, match="labels must lie in 0..9"):
        read_source(official_dir)


def test_official_bad_shape(official_dir: Path) -> None:
    batch = {b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}
    (official_dir / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UserError, match=r"shape \(N, 3072\)"):
        read_source(official_dir)


class Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_pickles_cannot_run_code() -> None:
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        load_batch(pickle.dumps({b"data": Evil()}), "evil")


def test_image_folder(image_folder: Path) -> None:
    raw = read_source(image_folder)
    assert raw.kind == "image-folder"
    assert raw.classes == ["cat", "dog", "frog"]
    assert raw.images["train"].shape == (90, 32, 32, 3)
    assert raw.images["test"].shape == (15, 32, 32, 3)
    assert np.bincount(raw.labels["train"]).tolist() == [30, 30, 30]


def test_image_folder_archives(image_folder: Path, tmp_path: Path) -> None:
    tgz = write_tar(image_folder, tmp_path / "images.tgz")
    zipped = tmp_path / "images.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for file in image_folder.rglob("*.png"):
            archive.write(file, f"folder/{file.relative_to(image_folder)}")
    expected = read_source(image_folder)
    for path in (tgz, zipped):
        raw = read_source(path)
        assert raw.kind == "image-folder-archive"
        assert raw.classes == expected.classes
        assert np.array_equal(raw.images["train"], expected.images["train"])
        assert np.array_equal(raw.labels["test"], expected.labels["test"])


@pytest.mark.parametrize("last", ["notes.docx", "arrays.npz", "more.zip"])
def test_tar_ending_in_a_zip_based_file_is_read_as_tar(last: str, image_folder: Path,
                                                       tmp_path: Path) -> None:
    """Issue 12: zipfile finds a zip directory at the end of the file, so an uncompressed .tar
    whose last member is zip-based was read as that zip."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("word/document.xml", "<w/>")
    path = tmp_path / "images.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(image_folder, arcname="folder")
        info = tarfile.TarInfo(f"folder/{last}")
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    assert zipfile.is_zipfile(path)  # the trap
    for name in ("images.tar", "images"):  # by suffix, and by the tar header without one
        path = path.rename(tmp_path / name)
        raw = read_source(path)
        assert raw.kind == "image-folder-archive" and raw.classes == ["cat", "dog", "frog"]


def test_archive_errors_are_one_line(tmp_path: Path) -> None:
    for name in ("x.tgz", "x.tar", "x.zip"):
        (tmp_path / name).write_bytes(b"\x1f\x8b" + b"not an archive" * 40)
        with pytest.raises(UserError) as caught:
            read_source(tmp_path / name)
        assert "\n" not in str(caught.value), str(caught.value)


def test_class_folders_without_split_are_train(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "x", ["a", "b"], n_train=3)
    flat = tmp_path / "flat"
    (tmp_path / "x" / "train").rename(flat)
    raw = read_source(flat)
    assert list(raw.images) == ["train"] and raw.classes == ["a", "b"]


def test_resize_warns_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image_folder(tmp_path / "big", ["a", "b"], n_train=4, size=64)
    raw = read_source(tmp_path / "big")
    assert raw.images["train"].shape == (8, 32, 32, 3)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "8 image(s) were not 32x32" in err


def test_missing_test_class(image_folder: Path) -> None:
    for file in (image_folder / "test" / "dog").iterdir():
        file.unlink()
    (image_folder / "test" / "dog").rmdir()
    with pytest.raises(UserError, match="dog in train/ but missing from test/"):
        read_source(image_folder)


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "a" / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="no images found"):
        read_source(tmp_path / "empty")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_source(tmp_path / "nope.tgz")


def test_corrupt_and_truncated_archives(image_folder: Path, tmp_path: Path) -> None:
    tgz = write_tar(image_folder, tmp_path / "images.tgz")
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    for path in (truncated, garbage):
        with pytest.raises(UserError, match="corrupt or truncated|cannot decode"):
            read_source(path)


def test_unsupported_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="unsupported data source"):
        read_source(tmp_path / "notes.txt")


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "CMYK", "L", "I;16", "1"])
def test_decode_odd_modes(mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    image = rgb.convert("L").convert(mode) if mode == "I;16" else rgb.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    array, resized = decode_image(buffer.getvalue(), f"odd.{fmt.lower()}")
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8 and resized


def test_decode_garbage() -> None:
    with pytest.raises(UserError, match="cannot decode image"):
        decode_image(b"definitely not an image", "x.png")
    with pytest.raises(UserError, match="cannot decode image"):
        decode_image(png_bytes(np.zeros((32, 32, 3), np.uint8))[:40], "cut.png")


def test_dependency_floors_cover_the_safety_claims() -> None:
    """Issue 12: torch below 2.10 can run code from a weights_only load; numpy below 2.0 has no
    numpy._core.numeric (every batch refused); pillow below 10.0.1 bundles a libwebp with a heap
    overflow. The installed versions must meet the floors too."""
    import importlib
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]
                    + project["optional-dependencies"]["serve"]]
    floors = {r.name.lower(): min(Version(s.version) for s in r.specifier if s.operator == ">=")
              for r in requirements if r.specifier}
    wanted = {"torch": "2.10", "numpy": "2.0", "pillow": "10.0.1", "h11": "0.16",
              "starlette": "0.49.1"}
    for name, least in wanted.items():
        assert floors[name] >= Version(least), (name, floors[name])
        assert Version(importlib.metadata.version(name)) >= floors[name], name
    assert importlib.import_module("numpy._core.numeric")._frombuffer  # what the unpickler names


def exif_oriented(orientation: int, fmt: str = "JPEG") -> bytes:
    """A 64x32 image stored dark left, bright right, with an EXIF Orientation tag."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, 32:] = 250
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(fmt: str, tmp_path: Path) -> None:
    """Issue 12: a phone photo with Orientation 6 reached the model turned 90 degrees while the web
    page (and every photo viewer) showed it upright. 6 means: turn 90 degrees clockwise to view,
    so the stored left half (dark) is on top."""
    image, resized = decode_image(exif_oriented(6, fmt), "phone.jpg")
    assert resized
    top, bottom = image[:12].mean(), image[-12:].mean()
    assert top < 40 and bottom > 210, (top, bottom)
    upright, _ = decode_image(exif_oriented(1, fmt), "plain.jpg")
    assert upright[:, :12].mean() < 40 and upright[:, -12:].mean() > 210
    root = write_image_folder(tmp_path / "f", ["a", "b"], n_train=1)  # and in a folder of images
    (root / "train" / "a" / f"phone.{fmt.lower()}").write_bytes(exif_oriented(6, fmt))
    if fmt != "WEBP":  # (not an image-folder suffix)
        assert any(np.array_equal(x, image) for x in read_source(root).images["train"])


def test_damaged_exif_keeps_the_pixels() -> None:
    data = bytearray(exif_oriented(6))
    at = data.find(b"Exif\0\0")
    data[at + 6:at + 14] = b"\xff" * 8  # the TIFF header of the EXIF block
    image, _ = decode_image(bytes(data), "odd.jpg")
    assert image.shape == (32, 32, 3)


# ---------------------------------------------------------------------------------------------
# CIFAR-100: the official python set, fine and coarse labels


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    return write_cifar100_dir(tmp_path / "c100")


def test_cifar100_folder_archive_and_zip_read_alike(cifar100_dir: Path, tmp_path: Path) -> None:
    tgz = write_tar(cifar100_dir, tmp_path / "cifar-100-python.tar.gz")
    zipped = tmp_path / "cifar100.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for file in cifar100_dir.iterdir():
            archive.write(file, f"cifar-100-python/{file.name}")
    expected = read_source(cifar100_dir)
    assert expected.kind == "cifar100-python" and expected.classes == CIFAR100_FINE
    assert expected.images["train"].shape == (300, 32, 32, 3)
    assert expected.images["test"].shape == (100, 32, 32, 3)
    assert np.bincount(expected.labels["train"]).tolist() == [3] * 100
    for path in (cifar100_dir.parent, tgz, zipped):
        raw = read_source(path)
        assert raw.classes == expected.classes
        assert np.array_equal(raw.images["train"], expected.images["train"])
        assert np.array_equal(raw.labels["test"], expected.labels["test"])


def test_cifar100_coarse_labels_are_the_superclasses_of_the_same_images(cifar100_dir: Path) -> None:
    fine, coarse = read_source(cifar100_dir), read_source(cifar100_dir, "coarse")
    assert coarse.classes == CIFAR100_COARSE
    batch = pickle.loads((cifar100_dir / "train").read_bytes(), encoding="bytes")
    for split in ("train", "test"):
        assert np.array_equal(coarse.images[split], fine.images[split])
        assert np.array_equal(coarse.labels[split], fine.labels[split] // 5)  # the builder's rule
    assert coarse.labels["train"].tolist() == batch[b"coarse_labels"]
    red_plane = batch[b"data"][0, :1024].reshape(32, 32)  # channel order, as for CIFAR-10
    assert np.array_equal(fine.images["train"][0, :, :, 0], red_plane)


def test_cifar100_archive_warns_on_md5_mismatch(cifar100_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    read_source(write_tar(cifar100_dir, tmp_path / "cifar-100-python.tar.gz"))
    assert "does not match the official CIFAR-100 MD5" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["meta", "train", "test"])
def test_cifar100_incomplete(cifar100_dir: Path, missing: str) -> None:
    (cifar100_dir / missing).unlink()
    with pytest.raises(UserError, match=f"not a complete CIFAR-100 python set, missing {missing}"):
        read_source(cifar100_dir)


def test_coarse_labels_need_cifar100(official_dir: Path, image_folder: Path, tmp_path: Path) -> None:
    for source in (official_dir, image_folder, write_tar(image_folder, tmp_path / "images.tgz")):
        with pytest.raises(UserError, match="is not CIFAR-100: it has one set of labels"):
            read_source(source, "coarse")
    with pytest.raises(UserError, match="label_mode must be 'fine' or 'coarse'"):
        read_source(official_dir, "super")


def test_a_folder_with_both_official_sets_asks_which(official_dir: Path) -> None:
    write_cifar100_dir(official_dir.parent)
    with pytest.raises(UserError, match="holds both cifar-10-batches-py/ and cifar-100-python/"):
        read_source(official_dir.parent)


class HugeArray:
    """Pickles as numpy pickles an array, claiming 10,000 x 3072 bytes and holding 16."""

    def __reduce__(self) -> tuple[Any, ...]:
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (10_000, 3072), np.dtype("u1"), False,
                                                         b"\0" * 16)


def meta_with(**changes: Any) -> bytes:
    meta = {b"fine_label_names": [n.encode() for n in CIFAR100_FINE],
            b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE]}
    meta.update({key.encode(): value for key, value in changes.items()})
    return pickle.dumps(meta, protocol=2)


def batch_with(**changes: Any) -> bytes:
    batch = cifar100_batch(np.arange(100))
    batch.update({key.encode(): value for key, value in changes.items()})
    return pickle.dumps(batch, protocol=2)


CRAFTED = {  # (file, its bytes, what the one-line error says)
    "label-out-of-range": ("train", lambda: batch_with(fine_labels=[100] * 100),
                           r"train: labels must lie in 0..99"),
    "labels-missing": ("test", lambda: batch_with(fine_labels=None), "'fine_labels' must be a list"),
    "labels-not-numbers": ("train", lambda: batch_with(fine_labels=["x"] * 100),
                           "'fine_labels' must be a list of integers"),
    "data-not-3072": ("train", lambda: batch_with(data=np.zeros((100, 100), np.uint8)),
                      r"shape \(N, 3072\)"),
    "data-float": ("train", lambda: batch_with(data=np.zeros((100, 3072), np.float32)),
                   "must be uint8"),
    "names-too-few": ("meta", lambda: meta_with(fine_label_names=[b"a", b"b"]),
                      "meta must list 100 fine_label_names"),
    "names-repeated": ("meta", lambda: meta_with(fine_label_names=[b"same"] * 100),
                       "100 distinct names"),
    "name-too-long": ("meta", lambda: meta_with(fine_label_names=[b"x" * 300 + bytes([i])
                                                                  for i in range(100)]),
                      "distinct names of 1 to 255 characters"),
    "names-not-text": ("meta", lambda: meta_with(fine_label_names=list(range(100))),
                       "meta must list 100 fine_label_names"),
    "not-a-dict": ("meta", lambda: pickle.dumps([1, 2, 3], protocol=2), r"not a dict"),
    "runs-code": ("train", lambda: pickle.dumps({b"data": Evil()}, protocol=2),
                  "refusing to load __builtin__.print"),
    "huge-array": ("test", lambda: pickle.dumps({b"data": HugeArray(), b"fine_labels": [0]}, 2),
                   "does not fit 16 bytes"),
    "opcode-flood": ("meta", lambda: b"\x80\x02" + b"]" * 600_000 + b".",
                     "more than 500,000 pickle operations"),
    "not-a-pickle": ("train", lambda: b"\x1f\x8b garbage", "not a valid CIFAR-100 file"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_cifar100_files_fail_in_one_line_with_bounded_memory(case: str, cifar100_dir: Path,
                                                                       tmp_path: Path) -> None:
    """Each file of the set replaced by a hostile or damaged one, read as a folder and as an
    archive: one line of UserError, no code run, and memory in proportion to the file."""
    name, make, message = CRAFTED[case]
    (cifar100_dir / name).write_bytes(make())
    for source in (cifar100_dir, write_tar(cifar100_dir, tmp_path / "crafted.tgz")):
        tracemalloc.start()
        try:
            with pytest.raises(UserError, match=message) as caught:
                read_source(source)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert "\n" not in str(caught.value)
        assert peak < 64 << 20, f"{case}: peak allocation {peak >> 20} MB"


def test_the_train_file_has_a_budget_of_its_own(cifar100_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The train file's larger opcode budget applies to it and only to it."""
    monkeypatch.setattr(sources, "CIFAR100_TRAIN_PICKLE_OPS", 1000)
    with pytest.raises(UserError, match="train is not a valid CIFAR-100 file: more than 1,000 pickle"):
        read_source(cifar100_dir)


def test_a_full_size_train_file_fits_its_budget_and_not_a_batch_budget() -> None:
    """50,000 file names (bytes, as Python 3 writes them at protocol 2: ~7 operations each) and
    two label lists: more operations than a CIFAR-10 batch may take, fewer than the train file's
    budget. Counted without unpickling (the image data plays no part: one operation)."""
    labels = list(range(100)) * 500
    blob = pickle.dumps({b"filenames": [f"image_{i:05d}.png".encode() for i in range(50_000)],
                         b"fine_labels": labels, b"coarse_labels": [x // 5 for x in labels],
                         b"data": np.zeros((1, 3072), np.uint8)}, protocol=2)
    operations = sum(1 for _ in pickletools.genops(blob))
    assert sources.MAX_PICKLE_OPS < operations < sources.CIFAR100_TRAIN_PICKLE_OPS / 4


def test_label_names_that_are_not_utf8_are_escaped_not_a_crash(official_dir: Path) -> None:
    """batches.meta's names were decoded as strict UTF-8 outside the reader's error handling:
    one byte like Latin-1's é raised UnicodeDecodeError. They are escaped as folder names are."""
    names = [b"caf\xe9", *(f"c{i}".encode() for i in range(9))]
    (official_dir / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    assert read_source(official_dir).classes[0] == "caf\\udce9"
