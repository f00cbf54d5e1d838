"""When the command started: a `--budget` counts from there, so the seconds spent importing torch
and reading the data are inside the budget too. Imports nothing, so `cli.main` can mark the start
before anything else loads.

    >>> from cifarlab import clock
    >>> clock.take_start() > 0
    True
"""

from __future__ import annotations

import time

_started: float | None = None


def mark_start() -> None:
    """Note now as the start of the command's first run (cli.main calls it first)."""
    global _started
    _started = time.perf_counter()


def take_start() -> float:
    """When the budget's clock started: the command's start for its first run, else now (a call
    from Python, or the later runs of `--seeds`, whose clocks start with them)."""
    global _started
    started, _started = _started, None
    return started if started is not None else time.perf_counter()
