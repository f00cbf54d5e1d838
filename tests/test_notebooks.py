"""The notebooks in examples/ are committed with the outputs of a full run, and run top to bottom
in the tests on a few hundred images for one epoch.

A reader sees real figures and numbers without running anything: scripts/run_notebooks.py
(`make notebooks`) runs each notebook with its full settings and writes it back with its outputs
and a "ran-on" cell that says on which machine, when and how long. The tests check that every
committed notebook holds such outputs, and that the script writes them right.

They also run a copy of each notebook, its outputs cleared, in a kernel with today's code: the
first code cell (tagged `parameters`) switches to the quick setting when CIFARLAB_NOTEBOOK_QUICK is
set. nbclient runs them: it is what nbmake and papermill run underneath, one small dependency, and
it hands back the executed notebook, so the test checks what a learner would see (every cell ran,
no error, the figures are there), not only that nothing raised.
"""

from __future__ import annotations

import datetime
import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
# Figures each notebook draws on purpose (LabFigure._repr_png_), at least; training in a
# notebook adds its live curves on top.
FIGURES = {"01-classic-cnns": 8, "02-your-own-model": 1, "03-fast": 1, "04-your-own-images": 3}
RERUN = "run it: make notebooks (or .venv/bin/python scripts/run_notebooks.py {})"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_notebooks = load_script()


def ran_on_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if "ran-on" in cell.metadata.get("tags", [])]


@pytest.fixture(scope="module")
def notebook_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One data cache for all the notebooks: the shared archive is decoded once, not four times."""
    yield tmp_path_factory.mktemp("notebook-cache")


def test_the_four_notebooks_are_there() -> None:
    assert [p.stem for p in NOTEBOOKS] == sorted(FIGURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_with_the_outputs_of_a_full_run(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "CIFARLAB_NOTEBOOK_QUICK" in code[0].source
    rerun = RERUN.format(path.relative_to(ROOT))
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), \
        f"{path.name} does not hold the outputs of one run top to bottom; {rerun}"
    ran_on = ran_on_cells(notebook)
    assert len(ran_on) == 1, f"{path.name} does not say where and when it ran; {rerun}"
    first = next(i for i, cell in enumerate(notebook.cells) if cell.cell_type == "markdown")
    assert notebook.cells.index(ran_on[0]) == first + 1 and ran_on[0].cell_type == "markdown"
    assert "full run" in ran_on[0].source and "quick mode" not in ran_on[0].source.lower(), \
        f"{path.name} holds the outputs of a quick-mode run; {rerun}"
    outputs = [out for cell in code for out in cell.outputs]
    assert [out.ename for out in outputs if out.output_type == "error"] == []
    pngs = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(pngs) >= FIGURES[path.stem], f"{path.name} shows {len(pngs)} figures; {rerun}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
@pytest.mark.notebook
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path, shared_archive: Path,
                                     notebook_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"CIFARLAB_NOTEBOOK_QUICK": "1", "CIFARLAB_DATA": str(shared_archive),
                        "XDG_CACHE_HOME": str(notebook_cache), "CIFARLAB_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)  # the kernel inherits this environment
    shutil.copy(path, tmp_path / path.name)  # its runs/ land in tmp_path, not in examples/
    notebook = nbformat.read(tmp_path / path.name, as_version=4)
    run_notebooks.clear_outputs(notebook)  # what is checked below comes from today's code
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


def tiny_notebook(*sources: str) -> nbformat.NotebookNode:
    """A title, then one code cell per source (a markdown cell where a source starts with #)."""
    cells = [nbformat.v4.new_markdown_cell("# A title")]
    cells += [nbformat.v4.new_markdown_cell(s) if s.startswith("#") else nbformat.v4.new_code_cell(s)
              for s in sources]
    return nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})


def test_ran_on_cell_goes_after_the_title_once() -> None:
    notebook = tiny_notebook("x = 1", "## more", "x")
    run_notebooks.set_ran_on(notebook, "first run")
    ran_on = ran_on_cells(notebook)
    assert [cell.source for cell in ran_on] == ["first run"] and notebook.cells[1] is ran_on[0]
    assert ran_on[0].cell_type == "markdown"
    notebook.cells.append(notebook.cells.pop(1))  # moved to the end by hand: it comes back
    run_notebooks.set_ran_on(notebook, "second run")
    assert [cell.source for cell in ran_on_cells(notebook)] == ["second run"]
    assert notebook.cells[1] is ran_on_cells(notebook)[0]
    assert [cell.source for cell in notebook.cells] == ["# A title", "second run", "x = 1", "## more", "x"]
    assert notebook.cells[1].id == ran_on[0].id  # the same cell id: a rerun's diff is the words
    nbformat.validate(notebook)


def test_ran_on_text_says_where_when_how_long_and_quick_mode() -> None:
    words = dict(cpu="AMD EPYC 7B13", cores=2, torch="2.13.0", cifarlab="0.2.0",
                 day=datetime.date(2026, 12, 5), seconds=31 * 60 + 10)
    full = run_notebooks.ran_on_text(**words, quick=False)
    for fact in ("full run", "an AMD EPYC 7B13 (2 cores)", "torch 2.13.0", "cifarlab 0.2.0",
                 "2026-12-05", "31 minutes", "make notebooks"):
        assert fact in full
    assert "quick mode" not in full.lower()
    quick = run_notebooks.ran_on_text(**{**words, "cores": 1, "seconds": 14.6}, quick=True)
    assert "quick mode" in quick and "full run" not in quick and "(1 core)" in quick
    assert "15 seconds" in quick
    assert run_notebooks.duration(2 * 3600 + 7 * 60) == "2 hours 7 minutes"


def test_tidy_drops_timings_and_progress_bars() -> None:
    notebook = tiny_notebook("x = 1")
    cell = notebook.cells[1]
    cell.metadata.update(execution={"iopub.status.busy": "2026-12-05T10:00:00"}, scrolled=True,
                         tags=["keep"])
    bar = {"application/vnd.jupyter.widget-view+json": {"model_id": "ab"}, "text/plain": "0%|"}
    cell.outputs = [nbformat.v4.new_output("display_data", data=bar),
                    nbformat.v4.new_output("stream", name="stdout", text="epoch 1\n")]
    notebook.metadata["widgets"] = {"state": {}}
    run_notebooks.tidy(notebook)
    assert cell.metadata == {"tags": ["keep"]} and "widgets" not in notebook.metadata
    assert [out.output_type for out in cell.outputs] == ["stream"]


def test_script_writes_outputs_and_leaves_a_failed_notebook_untouched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("CIFARLAB_NOTEBOOK_QUICK", "CIFARLAB_DATA"):
        monkeypatch.setenv(name, "")  # main() sets them; put back after the test
    good, bad = tmp_path / "good.ipynb", tmp_path / "bad.ipynb"
    nbformat.write(tiny_notebook("import os\nprint(os.environ['CIFARLAB_NOTEBOOK_QUICK'], 6 * 7)"), good)
    nbformat.write(tiny_notebook("x = 1", "raise ValueError('no such class: ' + 'dgo')", "x"), bad)
    before = bad.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert run_notebooks.main(["--quick", str(bad), str(good)]) == 1  # a failure, and it goes on
    assert bad.read_bytes() == before
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "bad.ipynb" in line)
    assert "cell 3 (`raise ValueError(" in line and "ValueError: no such class: dgo" in line
    assert "Traceback" not in err
    written = nbformat.read(good, as_version=4)
    assert written.cells[2].outputs[0].text == "1 42\n" and written.cells[2].execution_count == 1
    assert "quick mode" in ran_on_cells(written)[0].source
    assert "execution" not in written.cells[2].metadata
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ipynb", "good.ipynb"]  # no temp files
