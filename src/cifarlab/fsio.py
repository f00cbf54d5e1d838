"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Everything cifarlab writes goes to a temporary file in the target's folder and is then renamed
over the target with `os.replace`, which is atomic on POSIX file systems; the file's data is synced
before the rename and the folder after it, so a power cut leaves the old file or the new one. A
failure on the way (disk full, read-only folder) removes the temporary file and is reported as one
clear error. New files get the usual permissions: 0666 less the umask, as `open()` gives.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from cifarlab.errors import UserError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success it replaces `path`, on error it vanishes."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temp(target)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _sync_folder(target.parent)
    except OSError as exc:
        _remove_quietly(tmp)
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def create_temp(target: Path) -> tuple[int, str]:
    """A new, empty `.NAME.XXXXXXXX.tmp` beside `target`, open for writing. Made with mode 0666 so
    that the umask applies (tempfile.mkstemp makes every file 0600, readable by its owner only)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {target}")


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it survives a power cut (POSIX only)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    with contextlib.suppress(OSError):  # some file systems cannot sync a folder; the file is written
        os.fsync(fd)
    os.close(fd)


def make_dir(path: str | os.PathLike[str]) -> None:
    """Create a folder (and its parents); a file in the way or a read-only disk is a UserError."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder {path}: {exc.strerror or exc}") from exc


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_with(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], None]) -> None:
    """Atomically write `path` with a function that writes to a binary file object."""
    with atomic_open(path, "wb") as handle:
        writer(handle)


OUTPUTS_FILE = ".cifarlab-outputs.json"  # in each folder of results: what cifarlab wrote there
OUTPUTS_FORMAT = "cifarlab-outputs"


def write_outputs(folder: str | os.PathLike[str], files: dict[str, bytes], owned: bool = False) -> None:
    """Write `files` ({name: bytes}) into `folder`, each atomically, replacing only files that
    cifarlab wrote there itself and nobody changed since.

    What cifarlab writes is recorded in the folder's OUTPUTS_FILE with each file's SHA-256, so a
    file of the same name that is not recorded, or no longer matches its ledger entry, is the user's:
    then nothing is written and the error names it. `owned` is for folders that belong to
    cifarlab anyway (RUN/report/, RUN/export/): there, files are replaced as before.
    """
    folder = Path(folder)
    ledger_file = folder / OUTPUTS_FILE
    ledger: dict[str, str] = {}
    if ledger_file.exists():
        try:
            saved = json.loads(ledger_file.read_text())
            if saved.get("format") != OUTPUTS_FORMAT:
                raise ValueError(saved.get("format"))
            ledger = {str(k): str(v) for k, v in saved["files"].items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            if not owned:
                raise UserError(f"{ledger_file} is not cifarlab's ledger of the files it wrote; "
                                "choose another output folder") from exc
    if not owned:
        for name in files:
            if _changed_since_written(folder / name, ledger.get(name)):
                raise UserError(f"{folder / name} exists and was not written by cifarlab (or was "
                                "changed since): move it away or choose another output folder")
    for name, data in files.items():
        write_bytes(folder / name, data)
        ledger[name] = hashlib.sha256(data).hexdigest()
        write_json(ledger_file, {"format": OUTPUTS_FORMAT, "files": ledger})


def _changed_since_written(path: Path, digest: str | None) -> bool:
    """Whether `path` holds something other than what cifarlab recorded writing (nothing: False)."""
    if not os.path.lexists(path):
        return False
    if digest is None or path.is_symlink() or not path.is_file():
        return True
    sha = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                sha.update(chunk)
    except OSError:
        return True
    return sha.hexdigest() != digest


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
