"""Source resolution, the decoded-array cache, splits, and the (faked) download."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab import data, download, sources
from cifarlab.errors import UserError
from cifarlab.evaluate import image_files
from conftest import write_official_dir, write_tar


def test_second_load_uses_cache(image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = data.load_dataset(image_folder, quiet=True)
    assert first.cache_file is not None and first.cache_file.exists()

    def no_decoding(path: Path) -> None:
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "read_source", no_decoding)
    second = data.load_dataset(image_folder, quiet=True)
    assert second.classes == first.classes
    assert np.array_equal(second.splits["train"].images, first.splits["train"].images)
    assert np.array_equal(second.splits["test"].labels, first.splits["test"].labels)


def test_changed_folder_invalidates_cache(image_folder: Path) -> None:
    before = data.load_dataset(image_folder, quiet=True)
    (image_folder / "train" / "cat" / "0000.png").unlink()
    after = data.load_dataset(image_folder, quiet=True)
    assert len(after.splits["train"]) == len(before.splits["train"]) - 1


def test_corrupt_cache_is_rebuilt(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = data.load_dataset(image_folder, quiet=True)
    assert first.cache_file is not None
    first.cache_file.write_bytes(b"garbage")
    again = data.load_dataset(image_folder, quiet=True)
    assert len(again.splits["train"]) == len(first.splits["train"])
    assert "ignoring an unreadable cache file" in capsys.readouterr().err


def test_env_var_source(image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARLAB_DATA", str(image_folder))
    assert data.load_dataset(None, quiet=True).source == image_folder.resolve()


def test_split_is_stratified_deterministic_and_disjoint() -> None:
    labels = np.repeat(np.arange(10), 50)
    train, val = data.split_indices(labels, 0.1, seed=3)
    again_train, again_val = data.split_indices(labels, 0.1, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert np.bincount(labels[val]).tolist() == [5] * 10
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 500
    _, other_val = data.split_indices(labels, 0.1, seed=4)
    assert not np.array_equal(val, other_val)


def test_make_splits_keeps_test(official_dir: Path) -> None:
    dataset = data.load_dataset(official_dir, quiet=True)
    splits = data.make_splits(dataset, 0.2)
    assert set(splits) == {"train", "val", "test"}
    assert len(splits["train"]) + len(splits["val"]) == 100
    assert len(splits["test"]) == 20


def test_bad_val_fraction() -> None:
    with pytest.raises(UserError, match="val_fraction must be in"):
        data.split_indices(np.zeros(10, np.int64), 1.5, 0)


def test_describe(official_dir: Path) -> None:
    dataset = data.load_dataset(official_dir, quiet=True)
    text = dataset.describe(0.1)
    assert "cifar10-python" in text and "test" in text and "class3" in text
    counts = dataset.class_counts(0.1)
    assert set(counts) == {"train", "val", "test"} and sum(counts["val"]) > 0


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_download_verifies_and_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = write_tar(write_official_dir(tmp_path / "src"), tmp_path / "cifar.tar.gz")
    payload = archive.read_bytes()
    monkeypatch.setattr(sources, "OFFICIAL_MD5", hashlib.md5(payload).hexdigest())
    monkeypatch.setattr(download, "OFFICIAL_MD5", hashlib.md5(payload).hexdigest())
    monkeypatch.setattr(download, "urlopen", lambda url, timeout: FakeResponse(payload))
    dataset = data.load_dataset(None, quiet=True)
    assert dataset.kind == "cifar10-python"
    assert dataset.source == data.cache_dir() / "cifar-10-batches-py"
    assert not list(data.cache_dir().glob(".download-*"))  # temporary files are gone


def test_download_rejects_wrong_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "urlopen", lambda url, timeout: FakeResponse(b"tampered"))
    with pytest.raises(UserError, match="expected c58f30108f718f92721af3b95e74349a"):
        data.load_dataset(None, quiet=True)
    assert not (data.cache_dir() / "cifar-10-batches-py").exists()


def test_offline_says_how_to_pass_local_data(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download, "urlopen", offline)
    with pytest.raises(UserError, match="pass local data with data=PATH or set CIFARLAB_DATA"):
        data.load_dataset(None, quiet=True)


# ---------------------------------------------------------------------------------------------
# Issue 12: the cache key, pruning, damaged caches, val/ folders, deep trees


def flat_png(value: int) -> bytes:
    """An uncompressed 32x32 PNG: every value gives a file of the same size."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def replace_keeping_size_and_mtime(file: Path, data: bytes, in_place: bool) -> None:
    """What cp -p, rsync -a and tar extraction do: new bytes, same size, the old mtime."""
    old = file.stat()
    assert len(data) == old.st_size
    if in_place:
        file.write_bytes(data)
    else:
        file.with_name(file.name + ".new").write_bytes(data)
        file.with_name(file.name + ".new").replace(file)
    os.utime(file, ns=(old.st_atime_ns, old.st_mtime_ns))


@pytest.mark.parametrize("kind", ["folder", "tar"])
@pytest.mark.parametrize("in_place", [False, True], ids=["rsync", "cp-p"])
def test_same_size_replacement_with_the_old_mtime_is_seen(kind: str, in_place: bool,
                                                          tmp_path: Path) -> None:
    root = tmp_path / "f"
    for split, cls in (("train", "a"), ("train", "b"), ("test", "a"), ("test", "b")):
        (root / split / cls).mkdir(parents=True)
        (root / split / cls / "0.png").write_bytes(flat_png(10))
    source = root if kind == "folder" else tmp_path / "f.tar"
    if kind == "tar":
        with tarfile.open(source, "w") as tar:
            tar.add(root, arcname="f")
    assert data.load_dataset(source, quiet=True).splits["train"].images.max() == 10
    if kind == "folder":
        replace_keeping_size_and_mtime(root / "train" / "a" / "0.png", flat_png(200), in_place)
    else:
        (root / "train" / "a" / "0.png").write_bytes(flat_png(200))
        other = tmp_path / "other.tar"
        with tarfile.open(other, "w") as tar:
            tar.add(root, arcname="f")
        replace_keeping_size_and_mtime(source, other.read_bytes(), in_place)
    assert data.load_dataset(source, quiet=True).splits["train"].images.max() == 200


def test_older_entries_and_dead_temporaries_are_pruned(image_folder: Path, private_cache: Path) -> None:
    first = data.load_dataset(image_folder, quiet=True).cache_file
    assert first is not None
    arrays = first.parent
    dead, fresh = arrays / ".x.npz.dead.tmp", arrays / ".x.npz.writing.tmp"
    for file in (dead, fresh, arrays / "0123456789abcdef0123.npz"):  # the last: a version-1 name
        file.write_bytes(b"x")
    os.utime(dead, (time.time() - 7200, time.time() - 7200))
    (image_folder / "train" / "cat" / "0000.png").unlink()
    second = data.load_dataset(image_folder, quiet=True).cache_file
    assert second is not None and second != first
    assert sorted(p.name for p in arrays.iterdir()) == sorted([second.name, fresh.name])


def flip_zip_fields(blob: bytes, where: str) -> bytes:
    out = bytearray(blob)
    if where == "patched-flag":  # flag bit 5, "compressed patched data": NotImplementedError
        out[out.find(b"PK\x01\x02") + 8] |= 0x20
    elif where == "encrypted-flag":  # RuntimeError
        out[out.find(b"PK\x01\x02") + 8] |= 0x01
    elif where == "method":
        at = out.find(b"PK\x01\x02") + 10
        out[at:at + 2] = (99).to_bytes(2, "little")
    else:
        out[len(out) // 2] ^= 0xFF  # inside the arrays: the CRC check fails
    return bytes(out)


@pytest.mark.parametrize("where", ["patched-flag", "encrypted-flag", "method", "data"])
def test_any_damage_to_the_cache_means_decode_again(where: str, image_folder: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 12: one flag bit in the .npz raised NotImplementedError on every later run."""
    first = data.load_dataset(image_folder, quiet=True)
    assert first.cache_file is not None
    first.cache_file.write_bytes(flip_zip_fields(first.cache_file.read_bytes(), where))
    again = data.load_dataset(image_folder, quiet=True)
    assert np.array_equal(again.splits["train"].images, first.splits["train"].images)
    assert "ignoring an unreadable cache file" in capsys.readouterr().err
    data.load_dataset(image_folder, quiet=True)  # rewritten: read without a word
    assert "ignoring" not in capsys.readouterr().err


def test_a_cache_with_wrong_arrays_is_not_used(image_folder: Path) -> None:
    first = data.load_dataset(image_folder, quiet=True)
    assert first.cache_file is not None
    meta = np.frombuffer(json.dumps({"kind": "x", "classes": ["a", "b"], "resized": 0}).encode(), np.uint8)
    np.savez(first.cache_file, meta=meta, train_images=np.zeros((2, 3), np.uint8),
             train_labels=np.zeros(2, np.int64))
    assert data.load_dataset(image_folder, quiet=True).classes == first.classes


def test_split_folders_in_any_case_and_a_val_folder(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 12: Train/ + Test/ were merged into training without a word, and val/ was ignored."""
    root = tmp_path / "f"
    for split, n in (("Train", 6), ("VAL", 2), ("Test", 3)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                (root / split / cls / f"{i}.png").write_bytes(flat_png(10 * i))
    dataset = data.load_dataset(root, quiet=True)
    assert {name: len(split) for name, split in dataset.splits.items()} == {"train": 12, "val": 4, "test": 6}
    splits = data.make_splits(dataset, 0.5)  # the folder wins over the fraction
    assert len(splits["train"]) == 12 and len(splits["val"]) == 4 and len(splits["test"]) == 6
    assert "the source's val/ folder" in dataset.describe(0.5)
    (root / "train" / "cat").mkdir(parents=True)  # a second spelling of the train folder
    (root / "train" / "cat" / "x.png").write_bytes(flat_png(1))
    with pytest.raises(UserError, match="both Train/ and train/ look like the train split"):
        data.load_dataset(root, quiet=True)
    (root / "train" / "cat" / "x.png").unlink()
    (root / "notes" / "cat").mkdir(parents=True)
    (root / "notes" / "cat" / "x.png").write_bytes(flat_png(1))
    (root / "train" / "cat").rmdir()
    (root / "train").rmdir()
    data.load_dataset(root, quiet=True)
    assert "ignored 1 image(s) outside the train/, val/ and test/ folders" in capsys.readouterr().err


def test_zip_paths_with_backslashes(tmp_path: Path) -> None:
    """PowerShell's Compress-Archive writes train\\cat\\0.png."""
    path = tmp_path / "windows.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                archive.writestr(f"pets\\{split}\\{cls}\\0.png", flat_png(5))
    dataset = data.load_dataset(path, quiet=True)
    assert dataset.classes == ["cat", "dog"] and set(dataset.splits) == {"train", "test"}


@pytest.mark.slow
def test_deep_folder_trees_are_a_user_error(tmp_path: Path) -> None:
    """Issue 12: a tree ~1000 folders deep gave RecursionError while fingerprinting."""
    root = tmp_path / "f"
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        (root / "train" / cls / "0.png").write_bytes(flat_png(3))
    made = [root / "train" / "a" / "d"]
    for _ in range(999):  # (os.makedirs recurses too)
        made.append(made[-1] / "d")
    try:
        for folder in made:
            folder.mkdir()
        with pytest.raises(UserError, match="more than 32 levels deep"):
            data.load_dataset(root, quiet=True)
        with pytest.raises(UserError, match="more than 32 levels deep"):
            image_files([str(root)])
    finally:  # shutil.rmtree, which pytest cleans up with, recurses as well
        for folder in reversed(made):
            if folder.exists():
                folder.rmdir()


def test_a_fraction_too_small_for_the_data_names_the_fraction(tmp_path: Path) -> None:
    """Issue 12: 0.1 of 3 images a class rounds to none, and the error blamed --val-fraction 0."""
    root = tmp_path / "f"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.png").write_bytes(flat_png(i))
    dataset = data.load_dataset(root, quiet=True)
    with pytest.raises(UserError, match=r"val_fraction=0\.1 leaves no validation images \(the smallest"):
        data.make_splits(dataset, 0.1)
    assert "val" not in data.make_splits(dataset, 0.0)
    assert len(data.make_splits(dataset, 0.5)["val"]) == 4
