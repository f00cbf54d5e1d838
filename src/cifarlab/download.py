"""Fetch the official CIFAR-10 archive, verify its MD5 and extract it atomically.

Used only when no data source is given and none is cached. Offline, it fails with one line that
says how to pass local data instead. Tests replace `urlopen` and never touch the network.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cifarlab.errors import UserError
from cifarlab.sources import OFFICIAL_DIRNAME, OFFICIAL_MD5

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
urlopen = urllib.request.urlopen  # replaced in tests


def download_official(cache: Path, quiet: bool = False, url: str = URL) -> Path:
    """Download and extract into `cache`; return the path of `cifar-10-batches-py`."""
    target = cache / OFFICIAL_DIRNAME
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    hint = "pass local data with --data PATH or set CIFARLAB_DATA"
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        try:
            _fetch(url, archive, quiet)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UserError(f"cannot download CIFAR-10 from {url} ({reason}); {hint}") from exc
        digest = hashlib.md5(archive.read_bytes()).hexdigest()
        if digest != OFFICIAL_MD5:
            raise UserError(f"downloaded archive has MD5 {digest}, expected {OFFICIAL_MD5}; {hint}")
        extract_dir = Path(tmp) / "extract"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(extract_dir, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UserError(f"cannot extract the downloaded archive: {exc}") from exc
        extracted = extract_dir / OFFICIAL_DIRNAME
        if not extracted.is_dir():
            raise UserError(f"the downloaded archive has no {OFFICIAL_DIRNAME} folder")
        try:
            os.replace(extracted, target)  # atomic: the folder appears complete or not at all
        except OSError:
            if not target.is_dir():  # another process won the race: that is fine
                raise
    return target


def _fetch(url: str, dest: Path, quiet: bool) -> None:
    with urlopen(url, timeout=60) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="downloading CIFAR-10",
                  disable=quiet, file=sys.stderr) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


__all__ = ["URL", "download_official"]
