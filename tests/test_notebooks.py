"""The notebooks in examples/ run top to bottom in the tests, on 1,000 images for one epoch.

Each notebook's first code cell (tagged `parameters`) switches to that quick setting when
CIFARLAB_NOTEBOOK_QUICK is set. nbclient runs them: it is what nbmake and papermill run
underneath, one small dependency, and it hands back the executed notebook, so the test checks what
a learner would see (every cell ran, no error, the figures are there), not only that nothing raised.

The committed notebooks carry no outputs (nbstripout-style): reviews show only real changes, and
no figure in the repository can disagree with the code that would draw it today.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.notebook

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
# Figures each notebook must show inline (LabFigure._repr_png_), at least.
FIGURES = {"01-seed-experiments": 8, "02-your-own-model": 1, "03-fast": 1}


@pytest.fixture(scope="module")
def notebook_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One data cache for all the notebooks: the shared archive is decoded once, not thrice."""
    yield tmp_path_factory.mktemp("notebook-cache")


def test_the_three_notebooks_are_there() -> None:
    assert [p.stem for p in NOTEBOOKS] == sorted(FIGURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), \
        f"strip the outputs of {path.name}: python scripts/strip_notebooks.py"
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "CIFARLAB_NOTEBOOK_QUICK" in code[0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path, shared_archive: Path,
                                     notebook_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"CIFARLAB_NOTEBOOK_QUICK": "1", "CIFARLAB_DATA": str(shared_archive),
                        "XDG_CACHE_HOME": str(notebook_cache), "CIFARLAB_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)  # the kernel inherits this environment
    shutil.copy(path, tmp_path / path.name)  # its runs/ land in tmp_path, not in examples/
    notebook = nbformat.read(tmp_path / path.name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on a failure
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    pngs = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(pngs) >= FIGURES[path.stem], f"{len(pngs)} figures shown"
    assert any("text/markdown" in out.get("data", {}) for out in outputs), "no comparison table"
    assert list((tmp_path / "runs").iterdir()), "no run written"
