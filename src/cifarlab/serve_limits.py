"""What one request to `cifarlab serve` may cost: the server's limits, with their reasons.

Kept apart from serve.py, which imports torch, so that `cifarlab serve --help` shows the
defaults at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What requests may cost. Worst-case memory is about 2 x max_concurrency x max_upload_bytes
    (a body and one copy) + workers x max_pixels x 4 bytes: ~0.85 GB with the defaults."""

    max_upload_bytes: int = 10 * 2**20  # a phone photo is 2-8 MB
    max_pixels: int = 25_000_000  # a 24-megapixel camera photo; a 20000x20000 bomb is 400 MP
    max_concurrency: int = 32  # open connections; more are answered 503 at once
    workers: int = 2  # images decoded and classified at once (one 32x32 image takes ~1 ms)
