"""One error type for user mistakes, and one place that prints warnings.

The CLI turns a `UserError` into a single line on stderr and exit code 2, so a user never sees a
traceback for a wrong path, a bad archive or an unknown recipe.
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """A problem with the user's input (path, file, option): reported in one line, exit code 2."""


class TrainingError(Exception):
    """Training could not go on (e.g. the loss became NaN): reported in one line, exit code 1."""


class Interrupted(Exception):
    """Training stopped on Ctrl-C after saving a resumable checkpoint: exit code 130."""

    def __init__(self, run_dir: object):
        super().__init__(
            f"interrupted; checkpoint saved. Resume with: cifarlab train --resume {run_dir}")
        self.run_dir = run_dir


class WorkersFailed(Exception):
    """A training process started by --nproc failed; it said why itself. Carries its exit code."""

    def __init__(self, code: int):
        super().__init__(f"a training process exited with code {code}")
        self.code = code


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception from a library as one line: its first, without SQLAlchemy's "(driver.Error) "."""
    text = " ".join((str(exc).strip().splitlines() or [type(exc).__name__])[0].split())
    if text.startswith("(") and ") " in text:  # "(psycopg.OperationalError) connection failed: ..."
        text = text.split(") ", 1)[1]
    return text[:limit]


def warn(message: str) -> None:
    """Print a one-line warning on stderr."""
    print(f"cifarlab: warning: {message}", file=sys.stderr, flush=True)
