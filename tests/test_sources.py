"""Every supported source format, and the bad inputs each must reject with one clear error."""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.errors import UserError
from cifarlab.sources import decode_image, load_batch, read_source
from conftest import CLASSES, png_bytes, write_image_folder, write_official_dir, write_tar


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
