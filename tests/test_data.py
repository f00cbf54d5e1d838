"""Source resolution, the decoded-array cache, splits, and the (faked) download."""

from __future__ import annotations

import hashlib
import io
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from cifarlab import data, download, sources
from cifarlab.errors import UserError
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
    with pytest.raises(UserError, match="val-fraction"):
        data.split_indices(np.zeros(10, np.int64), 1.5, 0)


def test_describe(official_dir: Path) -> None:
    dataset = data.load_dataset(official_dir, quiet=True)
    text = data.describe(dataset, data.make_splits(dataset, 0.1))
    assert "cifar10-python" in text and "test" in text and "class3" in text


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
    with pytest.raises(UserError, match="pass local data with --data PATH or set CIFARLAB_DATA"):
        data.load_dataset(None, quiet=True)
