"""Run the notebooks in examples/ top to bottom with their full settings and keep the outputs.

    make notebooks                          # all of them, 85 minutes on 2 cores
    .venv/bin/python scripts/run_notebooks.py examples/03-fast.ipynb
    .venv/bin/python scripts/run_notebooks.py --quick /tmp/copy.ipynb   # tries the script in seconds

The notebooks are committed with these outputs, so a reader sees real figures and numbers without
running anything. Each notebook runs in a fresh `python3` kernel whose working folder is its own
under /tmp/cifarlab-notebooks/, removed after (its runs/ and my_pets/ never land in examples/),
with CIFARLAB_NOTEBOOK_QUICK unset and CIFARLAB_DATA passed through (the shared archive beside the
repository when unset). Then one markdown cell, tagged "ran-on", right after the first markdown
cell, says on which machine and when it ran and how long it took. The file is replaced atomically;
a cell that fails leaves it as it was and the script exits 1 with that cell's error in one line.
`--quick` runs the tests' quick setting (CIFARLAB_NOTEBOOK_QUICK=1) and says "quick mode" in the
ran-on cell: tests/test_notebooks.py refuses such a notebook in examples/.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-train-jpeg.tgz"
TAG = "ran-on"
# Where a notebook runs, a folder per notebook. The same path on every run: the paths its outputs
# print stay the same, and the data cache keeps one entry per image folder path (replaced when the
# files change), where a fresh random folder would add ~25 MB to it each run. So: one run of a
# notebook at a time.
WORKDIR = Path(tempfile.gettempdir()) / "cifarlab-notebooks"
CELL_TIMEOUT = 3 * 3600  # seconds a single cell may take: a full training on 2 cores is ~20 min
NOISE = ("execution", "collapsed", "scrolled")  # cell metadata that changes on every run
WIDGET = "application/vnd.jupyter.widget-view+json"


def cpu_model() -> str:
    """The processor's name as Linux reports it ('AMD EPYC 7B13'), else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():  # less the (R) and (TM) marks
                return " ".join(re.sub(r"\((R|TM|tm)\)", "", value).split())
    except OSError:  # not on Linux
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def duration(seconds: float) -> str:
    """'45 seconds', '31 minutes', '1 hour 47 minutes': how people say how long something took."""
    if seconds < 90:
        return f"{round(seconds)} seconds"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} minutes"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} hour{'s' if hours > 1 else ''} {minutes} minutes"


def ran_on_text(*, cpu: str, cores: int, torch: str, cifarlab: str, day: datetime.date,
                seconds: float, quick: bool) -> str:
    """The ran-on cell's words: which machine, which versions, when, and how long."""
    article = "an" if cpu[:1].lower() in "aeiou" else "a"
    kind = ("a **quick mode** run (CIFARLAB_NOTEBOOK_QUICK=1: a few hundred images, one epoch; its "
            "numbers mean nothing)" if quick else "a full run")
    return (f"*These outputs come from {kind} on {article} {cpu} ({cores} "
            f"core{'s' if cores != 1 else ''}), torch {torch}, cifarlab {cifarlab}, on "
            f"{day.isoformat()}; the notebook took {duration(seconds)} top to bottom. "
            f"`make notebooks` reruns it.*")


def set_ran_on(notebook: nbformat.NotebookNode, text: str) -> None:
    """Put one markdown cell tagged "ran-on" with `text` right after the first markdown cell,
    replacing any there was (its cell id is kept, so a rerun's diff is only the words)."""
    old = [cell for cell in notebook.cells if TAG in cell.metadata.get("tags", [])]
    notebook.cells = [cell for cell in notebook.cells if TAG not in cell.metadata.get("tags", [])]
    cell = nbformat.v4.new_markdown_cell(text, metadata={"tags": [TAG]})
    if "id" in cell:  # nbformat 4.5 cells have ids; a fixed one keeps the diff to the words
        cell.id = old[0].get("id", TAG) if old else TAG
    first = next((i for i, c in enumerate(notebook.cells) if c.cell_type == "markdown"), -1)
    notebook.cells.insert(first + 1, cell)


def tidy(notebook: nbformat.NotebookNode) -> None:
    """Drop what changes on every run and tells a reader nothing: cell timings, collapsed and
    scrolled, and the progress bars. The trainer's bars are widgets that vanish when an epoch ends
    (leave=False); saved, they would stay as frozen "0%" bars (a widget's text fallback is its
    first frame), and the epoch table printed beside them says the same."""
    for cell in notebook.cells:
        for key in NOISE:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = [out for out in cell.outputs if WIDGET not in out.get("data", {})]
    notebook.metadata.pop("widgets", None)


def clear_outputs(notebook: nbformat.NotebookNode) -> None:
    """Forget the outputs of an earlier run, so that nothing of it survives this one."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None


class NotebookFailed(Exception):
    """A cell raised, or the kernel died or timed out: one line that names the cell."""


def failed_cell(notebook: nbformat.NotebookNode) -> str:
    """The first line of the first code cell with an error output, to name it in a message."""
    for number, cell in enumerate(notebook.cells, 1):
        if cell.cell_type == "code" and any(out.output_type == "error" for out in cell.outputs):
            first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            return f"cell {number} (`{first[:60]}{'...' if len(first) > 60 else ''}`)"
    return "a cell"


def execute(notebook: nbformat.NotebookNode, workdir: Path) -> None:
    """Run every cell in a fresh python3 kernel started in `workdir`; NotebookFailed on an error."""
    import nbclient
    from nbclient.exceptions import CellExecutionError

    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     record_timing=False,
                                     resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        raise NotebookFailed(f"{failed_cell(notebook)} failed: {exc.ename}: {exc.evalue}") from None
    except Exception as exc:  # the kernel died, a cell timed out, the kernel would not start
        raise NotebookFailed(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None


def run(path: Path, quick: bool) -> float:
    """Execute the notebook at `path` and write it back with its outputs and its ran-on cell.

    Returns the wall time in seconds. On a failure the file is left exactly as it was.
    """
    import torch

    import cifarlab
    from cifarlab import fsio, runtime

    notebook = nbformat.read(path, as_version=4)
    clear_outputs(notebook)
    workdir = WORKDIR / path.stem
    shutil.rmtree(workdir, ignore_errors=True)  # what a run that was killed left behind
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        execute(notebook, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - start
    set_ran_on(notebook, ran_on_text(cpu=cpu_model(), cores=runtime.available_cores(),
                                     torch=torch.__version__, cifarlab=cifarlab.__version__,
                                     day=datetime.date.today(), seconds=seconds, quick=quick))
    tidy(notebook)
    text = nbformat.writes(notebook)
    fsio.write_text(path, text if text.endswith("\n") else text + "\n")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run in place (default: every one in examples/)")
    parser.add_argument("--quick", action="store_true",
                        help="the tests' quick setting (a few hundred images, one epoch), to try "
                             "this script; the ran-on cell then says 'quick mode'")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(EXAMPLES.glob("*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    # The kernel inherits this environment.
    if args.quick:
        os.environ["CIFARLAB_NOTEBOOK_QUICK"] = "1"
    else:
        os.environ.pop("CIFARLAB_NOTEBOOK_QUICK", None)
    if not os.environ.get("CIFARLAB_DATA") and SHARED_ARCHIVE.is_file():
        # The notebooks' own default is relative to examples/; they run in a temporary folder.
        os.environ["CIFARLAB_DATA"] = str(SHARED_ARCHIVE)
    failures = 0
    for path in paths:
        print(f"{path}: running{' in quick mode' if args.quick else ''} ...", flush=True)
        try:
            seconds = run(path, args.quick)
        except NotebookFailed as exc:
            print(f"{path}: {exc} (file left as it was)", file=sys.stderr, flush=True)
            failures += 1
        except KeyboardInterrupt:
            print(f"{path}: interrupted (file left as it was)", file=sys.stderr)
            return 130
        else:
            print(f"{path}: done in {duration(seconds)}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
