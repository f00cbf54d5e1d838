"""Atomic writes: permissions, durability of the rename, and what a failure leaves behind."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cifarlab import fsio
from cifarlab.errors import UserError


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_follow_the_umask(mask: int, mode: int, tmp_path: Path) -> None:
    """Issue 12: mkstemp made model.pt, report.html and exports 0600 whatever the umask."""
    with umask(mask):
        fsio.write_bytes(tmp_path / "model.pt", b"x")
        fsio.write_text(tmp_path / "report.html", "<p>")
        fsio.write_json(tmp_path / "sub" / "m.json", {})
    for name in ("model.pt", "report.html", "sub/m.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_the_folder_is_synced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        synced.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(fsio.os, "fsync", fsync)
    monkeypatch.setattr(fsio.os, "replace", replace)
    fsio.write_bytes(tmp_path / "a.bin", b"data")
    assert synced == ["file", "rename", "folder"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    fsio.write_json(target, {"v": 1})
    with pytest.raises(UserError, match="cannot write"), fsio.atomic_open(target, "w") as handle:
        handle.write("half")
        raise OSError(28, "No space left on device")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_outputs_replace_only_what_cifarlab_wrote(tmp_path: Path) -> None:
    fsio.write_outputs(tmp_path, {"a.png": b"1", "b.json": b"{}"})
    fsio.write_outputs(tmp_path, {"a.png": b"2"})  # recorded and unchanged: replaced
    assert (tmp_path / "a.png").read_bytes() == b"2"
    (tmp_path / "c.txt").write_text("mine")
    (tmp_path / "link.png").symlink_to(tmp_path / "c.txt")
    for name in ("c.txt", "link.png"):
        with pytest.raises(UserError, match=f"{name} exists and was not written by cifarlab"):
            fsio.write_outputs(tmp_path, {"a.png": b"3", name: b"x"})
    assert (tmp_path / "a.png").read_bytes() == b"2" and (tmp_path / "c.txt").read_text() == "mine"
    fsio.write_outputs(tmp_path, {"c.txt": b"x"}, owned=True)  # a folder that is cifarlab's anyway
    assert (tmp_path / "c.txt").read_bytes() == b"x"
    (tmp_path / fsio.OUTPUTS_FILE).write_text("not a record")
    with pytest.raises(UserError, match="not cifarlab's ledger"):
        fsio.write_outputs(tmp_path, {"a.png": b"4"})
