"""The `cifarlab` command line: a thin layer over the Python API (api.py).

Each command lives in its own module (train.py, evaluate.py, ...): it declares its options,
calls one API function and prints the result. This module builds the parser and maps errors to
exit codes, in one place: a user mistake (missing file, corrupt archive, unknown recipe ...)
prints one line on stderr and exits 2; a training failure such as a NaN loss exits 1; Ctrl-C
during training saves a resumable checkpoint and exits 130.

    cifarlab train --recipe base --data ../shared/data/cifar10-train-jpeg.tgz
    cifarlab train --recipe bn --set augment.flip=true --set lr=2e-3 --print-config
    cifarlab evaluate runs/base-20261130-101500 --tta --json
    cifarlab report runs/base-20261130-101500
    cifarlab lr-find --recipe base
    cifarlab search --recipe base --trials 30 --set epochs=8

Nothing here imports torch at module level: `cifarlab --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from cifarlab import __version__, clock
from cifarlab.config import suggest
from cifarlab.errors import Interrupted, TrainingError, UserError, WorkersFailed, shell_voice

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# command -> module under cifarlab.cli, in the order `--help` lists them
COMMANDS = {
    "train": "train", "evaluate": "evaluate", "predict": "predict", "report": "report",
    "compare": "compare", "explain": "explain", "robustness": "robustness", "export": "export",
    "serve": "serve", "summary": "summary", "models": "models", "data": "data", "search": "search",
    "lr-find": "lr_find",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifarlab", description="Train, diagnose and compare small image classifiers.",
        epilog="Run 'cifarlab COMMAND --help' for a command's options. Python: import cifarlab as cl.")
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(f"cifarlab.cli.{module}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    clock.mark_start()  # a --budget counts from here
    with shell_voice():  # messages name the flags of this command line, not Python keywords
        return _main(sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> int:
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        print(f"cifarlab: error: unknown command '{argv[0]}'{suggest(argv[0], COMMANDS)}; "
              f"the commands are: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USER_ERROR
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _unknown_options(parser, args.command, extra)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    return guarded(lambda: int(args.func(args)))


def guarded(work: Callable[[], int]) -> int:
    """Run a command; map what it raises to one line on stderr and an exit code (the module
    docstring lists them). Under torchrun, rank 0 alone reports a failure all processes share."""
    rank = os.environ.get("RANK", "0") or "0"
    speak = rank == "0"
    try:
        return work()
    except UserError as exc:
        _say(speak, f"cifarlab: error: {exc}")
        return EXIT_USER_ERROR
    except TrainingError as exc:
        _say(speak, f"cifarlab: training failed: {exc}")
        return 1
    except Interrupted as exc:
        _say(speak, f"cifarlab: {exc}")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _say(speak, "cifarlab: aborted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `cifarlab predict ... | head`
        return 0
    except WorkersFailed as exc:  # the worker said why itself
        return exc.code
    except Exception as exc:
        if not speak:  # mostly "connection closed by peer": rank 0 failed and said why
            first = (str(exc).strip().splitlines() or [""])[0]
            print(f"cifarlab: process {rank} stopped: {first[:200]}", file=sys.stderr)
            return 1
        raise


def _unknown_options(parser: argparse.ArgumentParser, command: str | None, extra: list[str]) -> None:
    """argparse's "unrecognized arguments", with a "did you mean" for a mistyped option."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            parser = action.choices[command]
    flags = [flag for action in parser._actions for flag in action.option_strings]
    hint = suggest(extra[0].split("=")[0], flags) if extra[0].startswith("-") else ""
    parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def _say(speak: bool, message: str) -> None:
    if speak:
        print(message, file=sys.stderr)
