"""The Python examples of README.md, docs/api.md and docs/from-keras.md run, so the docs cannot rot.

Each file's ```python blocks run in order in one namespace, as a reader would paste them, in a
fresh folder, with two substitutions: the shared archive's path becomes a tiny generated image
folder (10 classes like CIFAR-10, 40 training and 5 test images each), and every `epochs=N`
becomes `epochs=1`. The folder also holds the `my_cat.jpg` the examples classify. Blocks fenced
as ```python keras (the Keras side of from-keras.md) are for reading and do not run. The docs must
also name every page in docs/ (README) and every public name of the API (docs/api.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cifarlab as cl
from cifarlab.networks import MODELS
from conftest import write_image_folder

ROOT = Path(__file__).resolve().parents[1]
SHARED = "../shared/data/cifar10-train-jpeg.tgz"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


@pytest.fixture(scope="module")
def ten_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10's shape in miniature: a module built for 10 classes (the default) fits it."""
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return write_image_folder(tmp_path_factory.mktemp("docs") / "ten", names, n_train=40, n_test=5)


@pytest.fixture
def sandbox(tmp_path: Path, ten_classes: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((48, 64, 3), (200, 40, 40), np.uint8)).save(tmp_path / "my_cat.jpg")
    registered = set(MODELS)
    yield ten_classes
    for name in set(MODELS) - registered:  # a registered example model must not leak into other tests
        del MODELS[name]


@pytest.mark.slow
@pytest.mark.parametrize("page", ["README.md", "docs/api.md", "docs/from-keras.md"])
def test_python_examples_run(page: str, sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks(ROOT / page)
    assert blocks, f"{page} has no python examples"
    namespace: dict[str, object] = {"__name__": "docs_example"}
    for number, block in enumerate(blocks, 1):
        code = block.replace(SHARED, str(sandbox))
        code = re.sub(r"\bepochs=\d+", "epochs=1", code)
        try:
            exec(compile(code, f"{page}, python block {number}", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"{page}, python block {number} failed: {type(exc).__name__}: {exc}\n{block}")
    assert "Traceback" not in capsys.readouterr().out


def test_readme_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert [p for p in pages if f"({p})" not in readme] == []
    for notebook in (ROOT / "examples").glob("*.ipynb"):
        assert f"examples/{notebook.name}" in readme


def test_api_page_names_every_public_name() -> None:
    page = (ROOT / "docs" / "api.md").read_text()
    names = [f"cl.{name}" for name in cl.__all__]
    methods = [name for name in dir(cl.Run) if not name.startswith("_")]
    assert [n for n in names if n not in page] == []
    assert [m for m in methods if f"`{m}" not in page] == []
