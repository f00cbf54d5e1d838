"""cifarlab's errors, the language they speak, and one place that prints warnings.

A user mistake is a `UserError`, reported in one line: the CLI prints it on stderr and exits 2;
IPython and Jupyter show it as that one line too (`_render_traceback_`), not as a traceback.

Messages are written once, in the shell's words (`--lr`, `--resume DIR`), and spoken in the
caller's: from Python (the default) `str(error)` names keywords and calls instead (`lr`,
`cl.resume('DIR')`); `cifarlab`'s command line switches the whole process to the shell's words.

    >>> str(UserError("--batch-size must be at least 2; continue it with --resume runs/a"))
    "batch_size must be at least 2; continue it with cl.resume('runs/a')"
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import Any

_shell = False  # True once the command line runs: messages keep their flags


@contextlib.contextmanager
def shell_voice() -> Iterator[None]:
    """While a `cifarlab` command runs, messages name its flags (cli.main and the --nproc
    workers speak so); a Python caller around it, as a test is, keeps its own words after."""
    global _shell
    before, _shell = _shell, True
    try:
        yield
    finally:
        _shell = before


# Shell phrases and what a Python caller writes instead, in order. Placeholders in upper case
# (DIR, FILE, SRC, N) stay as they are.
_VALUE = r"(?:'[^']*'|\"[^\"]*\"|[^\s,;)]+)"
# values of choice flags that read as words: `--split test` is split='test', `--lr must` is not
_WORDS = ("val|test|train|best|final|onnx|torchscript|cpu|cuda|auto|val_acc|val_loss|adam|adamw|"
          "sgd|muon|constant|onecycle|cosine|step|plateau|fine|coarse|median|halving|none|tpe|random")
_FLAG = r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*"


def _keyword(flag: str, value: str | None = None) -> str:
    """--val-fraction 0 -> val_fraction=0; --split test -> split='test'; --lr -> lr."""
    name = flag.replace("-", "_")
    if value is None:
        return name
    plain = re.fullmatch(r"[-+0-9][\w.+-]*|N|DIR|FILE|SRC|RUN|PATH|'.*'|\".*\"", value)
    return f"{name}={value}" if plain else f"{name}='{value}'"


def _command(match: re.Match[str]) -> str:
    """`cifarlab evaluate RUN --split test` -> `cl.load('RUN').evaluate(split='test')`."""
    args = [_keyword(flag, value or None)
            for flag, value in re.findall(rf"--({_FLAG})(?: ([^\s-][^\s,;)]*))?", match.group(3))]
    return f"cl.load('{match.group(2)}').{match.group(1)}({', '.join(args)})"


_PYTHON_FORMS: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(rf"cifarlab train --resume ({_VALUE})"), r"cl.resume('\1')"),
    (re.compile(r"cifarlab train --print-config"), "help(cl.TrainConfig)"),
    (re.compile(rf"--resume ({_VALUE}) --epochs ({_VALUE})"), r"cl.resume('\1', epochs=\2)"),
    (re.compile(r"--resume (?=continues)"), "cl.resume "),
    (re.compile(rf"--resume (?!continues)({_VALUE})"), r"cl.resume('\1')"),
    (re.compile(r"--resume\b"), "cl.resume(...)"),
    (re.compile(rf"--config ({_VALUE}) --set \.\.\."), r"cl.train(config_file='\1', ...)"),
    (re.compile(rf"--config ({_VALUE})"), r"config_file='\1'"),
    (re.compile(r"--set key=value"), "keyword=value"),
    (re.compile(r"--set\b"), "a keyword"),
    (re.compile(r"--model __main__:(\w+)"), r"model=\1"),
    (re.compile(r"--nproc/torchrun"), "nproc/torchrun"),
    (re.compile(rf"cifarlab (evaluate|report|explain|robustness|predict|export) (\S+)"
                rf"((?: --{_FLAG}(?: [^\s-][^\s,;)]*)?)*)"), _command),
    (re.compile(rf"--({_FLAG}) ({_WORDS})\b(?![\w'-])"), lambda m: _keyword(m.group(1), m.group(2))),
    (re.compile(rf"--({_FLAG}) ([^\s,;)]*/[^\s,;)]*|N|DIR|FILE|SRC|RUN|PATH|[-+0-9][\w.+-]*)"
                rf"(?=[\s,;.)]|$)"),
     lambda m: _keyword(m.group(1), m.group(2).rstrip("."))),
    (re.compile(rf"--({_FLAG})"), lambda m: _keyword(m.group(1))),
]


def for_python(message: str) -> str:
    """A message written in the shell's words, in a Python caller's."""
    for pattern, replacement in _PYTHON_FORMS:
        message = pattern.sub(replacement, message)
    return message


class CifarlabError(Exception):
    """The errors cifarlab raises on purpose: one line, in the caller's words."""

    def __str__(self) -> str:
        message = super().__str__()
        return message if _shell else for_python(message)

    def _render_traceback_(self) -> list[str]:
        """IPython and Jupyter show this instead of a traceback: the one line that says it all."""
        return [f"{type(self).__name__}: {self}"]


class UserError(CifarlabError):
    """A problem with the user's input (path, file, option): reported in one line, exit code 2."""


class TrainingError(CifarlabError):
    """Training could not go on (e.g. the loss diverged): reported in one line, exit code 1."""


class Interrupted(CifarlabError):
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


def warn(message: str) -> None:
    """Print a one-line warning on stderr, in the caller's words."""
    print(f"cifarlab: warning: {message if _shell else for_python(message)}", file=sys.stderr,
          flush=True)
