"""What one request to `cifarlab serve` may cost: the server's limits, with their reasons.

Kept apart from serve.py, which imports torch, so that `cifarlab serve --help` shows the
defaults at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from cifarlab.errors import UserError

FLAGS = {"max_upload_bytes": "--max-upload-mb", "max_pixels": "--max-pixels",
         "max_concurrency": "--max-concurrency"}


@dataclass(frozen=True)
class Limits:
    """What requests may cost. Worst-case memory is about 2 x max_concurrency x max_upload_bytes
    (a body and one copy) + workers x max_pixels x 4 bytes: ~0.85 GB with the defaults, plus
    ~20 KB per open connection.

    A client that connects and sends nothing, or a byte now and then, is dropped after
    `header_seconds`; one that trickles its body gets 408 after `upload_seconds`. Only uploads in
    flight count towards `max_concurrency`, so idle sockets cannot make the server answer 503.
    """

    max_upload_bytes: int = 10 * 2**20  # a phone photo is 2-8 MB
    max_pixels: int = 25_000_000  # a 24-megapixel camera photo; a 20000x20000 bomb is 400 MP
    max_concurrency: int = 32  # uploads in flight (being read, decoded or classified); more: 503
    workers: int = 2  # images decoded and classified at once (one 32x32 image takes ~1 ms)
    max_connections: int = 512  # open sockets, idle ones included (~20 KB each); more: 503
    header_seconds: float = 5.0  # to send a request head, from connecting or the last response
    upload_seconds: float = 60.0  # to send a whole body: 10 MB at 1.4 Mbit/s

    def __post_init__(self) -> None:
        for field in fields(self):
            _check_positive(FLAGS.get(field.name, field.name), getattr(self, field.name))

    @classmethod
    def from_megabytes(cls, max_upload_mb: float, **others: Any) -> Limits:
        """The command line's form: the upload limit in MB (nan, inf and 0 are one-line errors)."""
        _check_positive("--max-upload-mb", max_upload_mb)
        return cls(max_upload_bytes=math.ceil(max_upload_mb * 2**20), **others)


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{name} must be a positive number, got {value}")
