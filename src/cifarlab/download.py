"""Fetch an official archive (CIFAR-10 or CIFAR-100), verify its MD5 and extract it atomically.

Used when no data source is given and none is cached (CIFAR-10), or when a source is named
`cifar10` or `cifar100` and no such path exists. Offline, it fails with one line that says how to
pass local data instead. Tests replace `urlopen` and never touch the network.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cifarlab.errors import UserError
from cifarlab.sources import CIFAR100_DIRNAME, CIFAR100_MD5, OFFICIAL_DIRNAME, OFFICIAL_MD5

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
NAMES = ("cifar10", "cifar100")  # the official sets, by the names Keras gives them
urlopen = urllib.request.urlopen  # replaced in tests


@dataclass(frozen=True)
class Official:
    """One official archive: where it lives, its MD5, and the folder it extracts to."""

    title: str
    url: str
    md5: str
    dirname: str


def official(name: str) -> Official:
    """`cifar10` or `cifar100` (read when called, so that tests can patch the constants)."""
    if name == "cifar100":
        return Official("CIFAR-100", CIFAR100_URL, CIFAR100_MD5, CIFAR100_DIRNAME)
    return Official("CIFAR-10", URL, OFFICIAL_MD5, OFFICIAL_DIRNAME)


def download_official(cache: Path, quiet: bool = False, url: str | None = None,
                      name: str = "cifar10") -> Path:
    """Download and extract the official set `name` into `cache` (once); return its folder
    (`cifar-10-batches-py` or `cifar-100-python`)."""
    spec = official(name)
    url = url or spec.url
    target = cache / spec.dirname
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    hint = "pass local data with --data PATH or set CIFARLAB_DATA"
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        archive = Path(tmp) / Path(url).name
        try:
            _fetch(url, archive, quiet, spec.title)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UserError(f"cannot download {spec.title} from {url} ({reason}); {hint}") from exc
        digest = hashlib.md5(archive.read_bytes()).hexdigest()
        if digest != spec.md5:
            raise UserError(f"downloaded archive has MD5 {digest}, expected {spec.md5}; {hint}")
        extract_dir = Path(tmp) / "extract"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(extract_dir, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UserError(f"cannot extract the downloaded archive: {exc}") from exc
        extracted = extract_dir / spec.dirname
        if not extracted.is_dir():
            raise UserError(f"the downloaded archive has no {spec.dirname} folder")
        try:
            os.replace(extracted, target)  # atomic: the folder appears complete or not at all
        except OSError:
            if not target.is_dir():  # another process won the race: that is fine
                raise
    return target


def _fetch(url: str, dest: Path, quiet: bool, title: str) -> None:
    with urlopen(url, timeout=60) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {title}",
                  disable=quiet, file=sys.stderr) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


__all__ = ["CIFAR100_URL", "NAMES", "URL", "download_official", "official"]
