"""Find the data, decode it once, cache it as uint8 arrays, and carve the splits.

Where the data comes from: `--data SRC`, else `$CIFARLAB_DATA`, else the official archive cached
in `~/.cache/cifarlab` (`$XDG_CACHE_HOME/cifarlab`), else a download of it.

Decoding 50,000 JPEGs takes many seconds, so the decoded arrays are cached in one uncompressed
.npz keyed by the source's path, size and modification time; loading that takes a fraction of a
second. The validation split is carved from the end of a seeded, per-class shuffle of train, so
every run with the same `val_fraction` and `split_seed` validates on the same images.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarlab import fsio
from cifarlab.download import download_official
from cifarlab.errors import UserError, warn
from cifarlab.sources import OFFICIAL_DIRNAME, RawData, read_source

CACHE_VERSION = 1
NOTICE_AFTER = 0.5  # seconds of decoding before saying so


@dataclass
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8, HWC
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    source: Path
    kind: str
    classes: list[str]
    splits: dict[str, Split]
    cache_file: Path | None = None

    def __repr__(self) -> str:  # the arrays are far too long to print
        sizes = ", ".join(f"{name} {len(split):,}" for name, split in self.splits.items())
        return (f"Dataset({self.kind} at {self.source}: {len(self.classes)} classes "
                f"({', '.join(self.classes)}); {sizes} images)")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cifarlab"


def resolve_source(data: str | os.PathLike[str] | None, quiet: bool = False) -> Path:
    """Where to read from: the argument, $CIFARLAB_DATA, the cached official set, or a download."""
    if data is not None and str(data) != "":
        return Path(data).expanduser().resolve()
    env = os.environ.get("CIFARLAB_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return download_official(cache_dir(), quiet=quiet)


def _fingerprint(path: Path) -> str:
    """Path + size + mtime; for a folder, of every file in it (a changed image changes the key)."""
    try:
        if path.is_dir():
            entries = []
            for file in sorted(path.rglob("*")):
                if file.is_file():
                    stat = file.stat()
                    entries.append(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}")
            # surrogatepass: file names that are not UTF-8 come as lone surrogates
            detail = hashlib.sha1("\n".join(entries).encode("utf-8", "surrogatepass")).hexdigest()
        else:
            stat = path.stat()
            detail = f"{stat.st_size}:{stat.st_mtime_ns}"
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    key = f"v{CACHE_VERSION}|{path}|{detail}"
    return hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def _save_cache(file: Path, raw: RawData) -> None:
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(
            json.dumps({"kind": raw.kind, "classes": raw.classes, "resized": raw.resized}).encode(),
            dtype=np.uint8,
        )
    }
    for split in raw.images:
        arrays[f"{split}_images"] = raw.images[split]
        arrays[f"{split}_labels"] = raw.labels[split]
    fsio.write_with(file, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]


def _load_cache(file: Path) -> RawData | None:
    try:
        with np.load(file, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes())
            raw = RawData(kind=meta["kind"], classes=list(meta["classes"]),
                          resized=int(meta["resized"]))
            for key in npz.files:
                if key.endswith("_images"):
                    split = key.removesuffix("_images")
                    raw.images[split] = npz[key]
                    raw.labels[split] = npz[f"{split}_labels"]
        return raw
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        warn(f"ignoring an unreadable cache file {file}; decoding the source again")
        return None


def load_dataset(data: str | os.PathLike[str] | None = None, quiet: bool = False,
                 use_cache: bool = True) -> Dataset:
    """Read a source (or its cached arrays) into a Dataset with `train` and, if any, `test`."""
    source = resolve_source(data, quiet=quiet)
    if not source.exists():
        raise UserError(f"data source not found: {source}")
    if source.is_dir() and (source / OFFICIAL_DIRNAME).is_dir():
        source = source / OFFICIAL_DIRNAME
    file = cache_dir() / "arrays" / f"{_fingerprint(source)}.npz"
    raw = _load_cache(file) if use_cache and file.exists() else None
    if raw is None:
        # Said only once decoding has taken a moment, so that a source that fails at once (empty,
        # not an archive) gets its one-line error and nothing before it.
        notice = threading.Timer(NOTICE_AFTER, print, [f"decoding {source} (once; cached as uint8 "
                                                       "arrays) ..."], {"flush": True})
        if not quiet:
            notice.start()
        try:
            raw = read_source(source)
        finally:
            notice.cancel()
        if use_cache:
            try:
                _save_cache(file, raw)
            except UserError as exc:
                warn(f"could not cache decoded data: {exc}")
    splits = {name: Split(raw.images[name], raw.labels[name]) for name in raw.images}
    return Dataset(source=source, kind=raw.kind, classes=raw.classes, splits=splits,
                   cache_file=file if use_cache and file.exists() else None)


def split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified train/val indices: each class is shuffled by `seed`; its last share goes to val."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = round(len(members) * val_fraction)
        cut = len(members) - n_val
        train_parts.append(members[:cut])
        val_parts.append(members[cut:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


def make_splits(dataset: Dataset, val_fraction: float, split_seed: int = 0) -> dict[str, Split]:
    """`train` and `val` carved from the source's train split, plus `test` if the source has one.
    A source of test images only (the official test set as images) has just `test`."""
    if "train" not in dataset.splits:
        return {"test": dataset.splits["test"]}
    full = dataset.splits["train"]
    train_idx, val_idx = split_indices(full.labels, val_fraction, split_seed)
    splits = {"train": Split(full.images[train_idx], full.labels[train_idx])}
    if len(val_idx):
        splits["val"] = Split(full.images[val_idx], full.labels[val_idx])
    if "test" in dataset.splits:
        splits["test"] = dataset.splits["test"]
    return splits


def describe(dataset: Dataset, splits: dict[str, Split]) -> str:
    """A human-readable summary for `cifarlab data`."""
    lines = [
        f"source:      {dataset.source}",
        f"kind:        {dataset.kind}",
        f"classes:     {len(dataset.classes)} ({', '.join(dataset.classes)})",
        "image shape: 32x32x3 uint8",
        f"cache:       {dataset.cache_file or '(not cached)'}",
        "splits:",
    ]
    width = max(len(c) for c in dataset.classes)
    for name, split in splits.items():
        counts = np.bincount(split.labels, minlength=len(dataset.classes))
        lines.append(f"  {name:<5} {len(split):>7} images")
        for cls, count in zip(dataset.classes, counts, strict=True):
            lines.append(f"      {cls:<{width}} {count:>6}")
    return "\n".join(lines)
