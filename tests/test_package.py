"""The package as a whole: its import graph has no circles, `import cifarlab` and every command's
--help stay free of torch, and a setting means the same from Python and from the shell."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cifarlab as cl
from cifarlab.cli import main

PACKAGE = Path(cl.__file__).parent


def import_graph() -> dict[str, set[str]]:
    """module -> the cifarlab modules it imports anywhere in its text (lazy imports included)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path

    def owner(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {owner(a.name) for a in node.names if a.name.startswith("cifarlab")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cifarlab"):
                module = node.module or ""
                found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in modules else owner(module)
                          for a in node.names}
        graph[name] = found - {name, "cifarlab"}  # the package's own __init__ re-exports lazily
    return graph


def test_the_import_graph_has_no_circles() -> None:
    graph, done, path = import_graph(), set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(module):], module]))
        if module in done:
            return
        path.append(module)
        for other in sorted(graph[module]):
            visit(other)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert "cifarlab.hpsearch.study" not in graph["cifarlab.api"]  # the wings are leaves


def test_import_is_cheap_and_help_and_print_config_need_no_torch() -> None:
    code = ("import sys, cifarlab\nassert 'torch' not in sys.modules\n"
            "from cifarlab.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "for cmd in ('train', 'serve', 'evaluate', 'search', 'lr-find'):\n"
            "    try:\n        main([cmd, '--help'])\n    except SystemExit:\n        pass\n"
            "assert main(['train', '--recipe', 'fast', '--budget', '10m', '--epochs', '5',\n"
            "             '--print-config']) == 0\n"
            "assert 'torch' not in sys.modules, 'help or --print-config imported torch'\n"
            "assert 'matplotlib' not in sys.modules and 'optuna' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("budget", ["10m", "600", "600s"])
def test_a_budget_means_the_same_from_python_and_the_shell(
        budget: str, capsys: pytest.CaptureFixture[str]) -> None:
    """With a budget, `epochs` is the most it may choose: cl.train and --budget agree."""
    assert main(["train", "--recipe", "fast", "--budget", budget, "--epochs", "5",
                 "--print-config"]) == 0
    shell = json.loads(capsys.readouterr().out)
    python = cl.make_config("fast", budget=budget, epochs=5)
    assert shell == python.to_dict()
    assert (python.budget, python.max_epochs, python.epochs) == (600.0, 5, 8)  # recipe's 8 to size
    assert cl.make_config("fast", budget=600).to_dict() == cl.make_config("fast", budget="10m").to_dict()
    assert cl.make_config("fast", epochs=5).max_epochs is None  # no budget: epochs are epochs


def test_paths_are_settings_like_strings(tmp_path: Path) -> None:
    assert cl.make_config("base", data=tmp_path).data == str(tmp_path)
    assert cl.make_config("base", data=str(tmp_path)).to_dict() == cl.make_config(
        "base", data=tmp_path).to_dict()
