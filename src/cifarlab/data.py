"""Find the data, decode it once, cache it as uint8 arrays, and carve the splits.

Where the data comes from: `--data SRC`, else `$CIFARLAB_DATA`, else the official archive cached
in `~/.cache/cifarlab` (`$XDG_CACHE_HOME/cifarlab`), else a download of it.

Decoding 50,000 JPEGs takes many seconds, so the decoded arrays are cached in one uncompressed
.npz keyed by the source's path and, for it or each file in it, size, modification and change
times and inode (a file replaced by one of the same size and the same mtime, as `cp -p`, `rsync -a`
and tar extraction leave it, still gets a new inode or ctime); loading that takes a fraction of a
second. A new entry replaces the older ones of the same path (each is ~180 MB for CIFAR-10). A
cache file that cannot be read, whatever the reason, is decoded again and overwritten.

The validation split is the source's val/ folder when it has one; otherwise it is carved from the
end of a seeded, per-class shuffle of train, so every run with the same `val_fraction` and
`split_seed` validates on the same images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab import fsio
from cifarlab.download import download_official
from cifarlab.errors import UserError, warn
from cifarlab.sources import OFFICIAL_DIRNAME, RawData, list_files, read_source

CACHE_VERSION = 2  # 2: the key holds inodes and ctimes, the name the path's own hash; val splits
STALE_TMP_SECONDS = 3600  # a .tmp this old in the cache is from a write that died (one takes seconds)
OLD_CACHE_NAME = re.compile(r"[0-9a-f]{20}\.npz")  # version 1's names, which nothing reads any more
NOTICE_AFTER = 0.5  # seconds of decoding before saying so
MEMORY_PREFIX = "memory:"  # the `data` of a run trained on arrays: "memory:<fingerprint>"


@dataclass
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8, HWC
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    """A data source's images in memory: `classes`, and `splits` ("train", and "val" and "test"
    where there are such); `origin` holds the settings that load it again (`cl.train(data=...)`
    of a Dataset read from a file trains from that file, with its carve-out)."""

    source: Path
    kind: str
    classes: list[str]
    splits: dict[str, Split]
    cache_file: Path | None = None
    origin: dict[str, Any] | None = None

    def __repr__(self) -> str:  # the arrays are far too long to print
        sizes = ", ".join(f"{name} {len(split):,}" for name, split in self.splits.items())
        return (f"Dataset({self.kind} at {self.source}: {len(self.classes)} classes "
                f"({', '.join(self.classes)}); {sizes} images)")

    def class_counts(self, val_fraction: float = 0.1, split_seed: int = 0) -> dict[str, list[int]]:
        """Images per class in each split, with val carved as a run with `val_fraction` carves it."""
        return {name: np.bincount(split.labels, minlength=len(self.classes)).tolist()
                for name, split in make_splits(self, val_fraction, split_seed).items()}

    def describe(self, val_fraction: float = 0.1, split_seed: int = 0) -> str:
        """What the source holds, for `cifarlab data`: kind, classes, cache, and images per class
        in each split (val carved as a run with `val_fraction` carves it)."""
        if "val" in self.splits:
            val_from = "the source's val/ folder (--val-fraction is not used)"
        elif val_fraction > 0:
            val_from = "carved from train: a seeded per-class shuffle (--val-fraction)"
        else:
            val_from = "none"
        lines = [
            f"source:      {self.source}",
            f"kind:        {self.kind}",
            f"classes:     {len(self.classes)} ({', '.join(self.classes)})",
            "image shape: 32x32x3 uint8",
            f"cache:       {self.cache_file or '(not cached)'}",
            f"validation:  {val_from}",
            "splits:",
        ]
        width = max(len(c) for c in self.classes)
        for name, counts in self.class_counts(val_fraction, split_seed).items():
            lines.append(f"  {name:<5} {sum(counts):>7} images")
            for cls, count in zip(self.classes, counts, strict=True):
                lines.append(f"      {cls:<{width}} {count:>6}")
        return "\n".join(lines)


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


def _fingerprint(path: Path) -> tuple[str, str]:
    """(hash of the path, hash of the path and its contents' stat): the cache file's name is both,
    so that newer entries for a path can replace the older ones."""
    try:
        if path.is_dir():
            entries = []
            for name in list_files(path):
                stat = (path / name).stat()
                entries.append(f"{name}:{_stat_key(stat)}")
            # surrogatepass: file names that are not UTF-8 come as lone surrogates
            detail = hashlib.sha1("\n".join(entries).encode("utf-8", "surrogatepass")).hexdigest()
        else:
            detail = _stat_key(path.stat())
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    where = hashlib.sha1(str(path).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    what = hashlib.sha1(f"v{CACHE_VERSION}|{path}|{detail}".encode("utf-8", "surrogatepass"))
    return where, what.hexdigest()[:20]


def _stat_key(stat: os.stat_result) -> str:
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{stat.st_ctime_ns}"


def _prune_cache(folder: Path, keep: Path, where: str) -> None:
    """Remove the cache entries of the same source path but older contents, entries of the old
    naming, and temporary files of writes that died: each entry is ~180 MB for CIFAR-10."""
    now = time.time()
    for file in folder.iterdir():
        name = file.name
        stale_tmp = name.endswith(".tmp") and now - _mtime(file) > STALE_TMP_SECONDS
        replaced = name.startswith(f"{where}-") and name.endswith(".npz") and file != keep
        if stale_tmp or replaced or OLD_CACHE_NAME.fullmatch(name):
            with contextlib.suppress(OSError):  # another process may have removed it already
                file.unlink()


def _mtime(file: Path) -> float:
    try:
        return file.stat().st_mtime
    except OSError:
        return float("inf")  # gone already: not stale


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
    """The cached arrays, or None if the file cannot be read or does not hold what was saved: any
    failure (a flipped bit in the zip raised NotImplementedError, forever) means decode again."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes())
            raw = RawData(kind=str(meta["kind"]), classes=[str(c) for c in meta["classes"]],
                          resized=int(meta["resized"]))
            for key in npz.files:
                if key.endswith("_images"):
                    split = key.removesuffix("_images")
                    raw.images[split] = npz[key]
                    raw.labels[split] = npz[f"{split}_labels"]
        _check_arrays(raw)
        return raw
    except Exception:  # a cache is only a copy: whatever went wrong, the source is still there
        warn(f"ignoring an unreadable cache file {file}; decoding the source again")
        return None


def _check_arrays(raw: RawData) -> None:
    if not ({"train", "test"} & raw.images.keys()) or len(raw.classes) < 2:
        raise ValueError("neither a train nor a test split")  # test only: the official test set
    for split, images in raw.images.items():
        labels = raw.labels[split]
        if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3) or images.ndim != 4:
            raise ValueError(f"{split} images of shape {images.shape}")
        if labels.dtype != np.int64 or labels.shape != (len(images),):
            raise ValueError(f"{split} labels of shape {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(raw.classes)):
            raise ValueError(f"{split} labels out of range")


def load_dataset(data: str | os.PathLike[str] | Dataset | None = None, quiet: bool = False,
                 use_cache: bool = True) -> Dataset:
    """Read a source (or its cached arrays) into a Dataset with `train` and, if any, `val`, `test`.
    A Dataset already in memory (arrays.py) is returned as it is."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str) and data.startswith(MEMORY_PREFIX):
        raise UserError(f"this run trained on images in memory ({data}), which a run folder does "
                        "not keep: pass them again, data=(x, y)")
    source = resolve_source(data, quiet=quiet)
    if not source.exists():
        raise UserError(f"data source not found: {source}")
    if source.is_dir() and (source / OFFICIAL_DIRNAME).is_dir():
        source = source / OFFICIAL_DIRNAME
    where, what = _fingerprint(source)
    file = cache_dir() / "arrays" / f"{where}-{what}.npz"
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
                _prune_cache(file.parent, file, where)
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
    """`train` and `val`, plus `test` if the source has one. `val` is the source's val/ folder when
    it has one (then `val_fraction` is not used), else carved from the source's train split.
    A source of test images only (the official test set as images) has just `test`."""
    if "train" not in dataset.splits:
        return {"test": dataset.splits["test"]}
    full = dataset.splits["train"]
    if "val" in dataset.splits:
        splits = {"train": full, "val": dataset.splits["val"]}
    else:
        train_idx, val_idx = split_indices(full.labels, val_fraction, split_seed)
        if val_fraction > 0 and not len(val_idx):
            smallest = int(np.bincount(full.labels).min()) if len(full) else 0
            raise UserError(f"--val-fraction {val_fraction:g} leaves no validation images (the "
                            f"smallest class has {smallest}); use a larger fraction, or put "
                            "validation images in a val/ folder")
        splits = {"train": Split(full.images[train_idx], full.labels[train_idx])}
        if len(val_idx):
            splits["val"] = Split(full.images[val_idx], full.labels[val_idx])
    if "test" in dataset.splits:
        splits["test"] = dataset.splits["test"]
    return splits
