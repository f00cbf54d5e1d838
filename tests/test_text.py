"""Words for numbers: "1 epoch", never "1 epochs", wherever cifarlab prints a count."""

from __future__ import annotations

import re

import pytest

from cifarlab.cli import main
from cifarlab.text import plural


def test_plural() -> None:
    assert plural(1, "epoch") == "1 epoch" and plural(0, "epoch") == "0 epochs"
    assert plural(1800, "image") == "1,800 images" and plural(2, "class", "classes") == "2 classes"


def test_the_recipe_list_says_1_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--list-recipes"]) == 0
    out = capsys.readouterr().out
    assert "1 epoch\n" in out  # the quick recipe
    assert not re.search(r"\b1 (epochs|images|trials|steps|seeds)\b", out)
    assert "seed's" not in out  # "seed" means the random seed only
