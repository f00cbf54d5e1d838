"""The Python API in a real Jupyter kernel, used as a Keras user writes a notebook: arrays in,
Keras' names, objects that display themselves, and errors that show as one line.

The notebook is written here, cell by cell, as such a user would write it, and run by nbclient
(what nbmake and papermill run underneath); the test then reads what the user would see.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.notebook

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

CELLS = {
    "data": """
import numpy as np
import cifarlab as cl
rng = np.random.default_rng(0)
y = rng.integers(0, 4, size=(480, 1))                     # Keras' labels: (N, 1)
x = rng.normal(128, 40, size=(480, 32, 32, 3))
x[..., 0] += 60 * (y[:, 0] == 1)[:, None, None]
x[..., 1] += 60 * (y[:, 0] == 2)[:, None, None]
x = np.clip(x, 0, 255) / 255.0                            # floats 0..1, as Keras tutorials scale
x_test, y_test = x[:80], y[:80]
""",
    "fit": """
run = cl.train("base", data=(x, y), val_fraction=0.2, epochs=2, batch_size=32,
               classes=["cat", "dog", "frog", "ship"], name="keras style", out="runs/keras")
run
""",
    "history": """
print(run.history["val_accuracy"], run.history.history["loss"])
run.history
""",
    "evaluate": "run.evaluate(data=(x_test, y_test))",
    "predict": "run.predict(x_test[:3])",
    "diagnosis": "run.diagnosis()",
    "summary": "run.summary()",
    "compare": """
other = cl.train("base", data=(x, y), val_fraction=0.2, epochs=1, batch_size=32,
                 classes=["cat", "dog", "frog", "ship"], name="one epoch", out="runs/one",
                 live_plot=False)
cl.compare([run, other])
""",
    "error": 'cl.train("base", data=(x, y), validation_split=0.2)',
}


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("keras-notebook")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source.strip(), metadata={"name": name})
                      for name, source in CELLS.items()]
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     allow_errors=True,
                                     resources={"metadata": {"path": str(folder)}})
    client.execute()
    return {cell.metadata["name"]: cell.outputs for cell in notebook.cells}


def shown(outputs: list[Any]) -> dict[str, str]:
    """The mime bundle of a cell's result (its execute_result or last display_data)."""
    results = [o for o in outputs if o.output_type in ("execute_result", "display_data")]
    return dict(results[-1]["data"]) if results else {}


@pytest.mark.parametrize("cell", ["fit", "history", "evaluate", "predict", "diagnosis", "compare"])
def test_results_display_as_tables_with_a_short_text_form(executed: dict[str, Any], cell: str) -> None:
    errors = [o for o in executed[cell] if o.output_type == "error"]
    assert not errors, errors
    data = shown(executed[cell])
    assert "text/plain" in data and len(data["text/plain"].splitlines()) <= 15, data.get("text/plain")
    assert "text/html" in data or "text/markdown" in data, sorted(data)


def test_live_curves_are_drawn_while_training(executed: dict[str, Any]) -> None:
    figures = [o for o in executed["fit"] if "image/png" in o.get("data", {})]
    assert figures, "no live curves in the notebook"


def test_keras_names_and_arrays_work(executed: dict[str, Any]) -> None:
    printed = "".join(o.get("text", "") for o in executed["history"] if o.output_type == "stream")
    assert printed.startswith("[") and printed.count("[") == 2  # two columns: val_accuracy, loss
    assert "keras style" in shown(executed["fit"])["text/plain"] or "keras style" in shown(
        executed["fit"]).get("text/html", "")
    assert "test split, 80 images" in shown(executed["evaluate"])["text/plain"]
    assert "keras style" in shown(executed["compare"])["text/plain"]
    assert "one epoch" in shown(executed["compare"])["text/plain"]
    assert "total parameters" in shown(executed["summary"])["text/plain"]


def test_a_user_error_shows_as_one_line(executed: dict[str, Any]) -> None:
    [error] = [o for o in executed["error"] if o.output_type == "error"]
    assert error["ename"] == "UserError"
    assert error["traceback"] == ["UserError: unknown setting 'validation_split' (did you mean "
                                  "'val_fraction'?); help(cl.TrainConfig) lists them all"]
