"""Remove outputs and execution counts from the notebooks in examples/ (nbstripout-style).

    .venv/bin/python scripts/strip_notebooks.py            # every notebook in examples/
    .venv/bin/python scripts/strip_notebooks.py NOTEBOOK ...

tests/test_notebooks.py fails while a committed notebook still holds outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def strip(path: Path) -> bool:
    """True if the notebook changed."""
    notebook = nbformat.read(path, as_version=4)
    changed = False
    for cell in notebook.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
        for key in ("execution", "collapsed", "scrolled"):
            changed = cell.metadata.pop(key, None) is not None or changed
    if changed:
        nbformat.write(notebook, path)
    return changed


if __name__ == "__main__":
    examples = Path(__file__).resolve().parents[1] / "examples"
    paths = [Path(p) for p in sys.argv[1:]] or sorted(examples.glob("*.ipynb"))
    for path in paths:
        print(f"{path}: {'stripped' if strip(path) else 'already clean'}")
