"""plaindata: settings files and records from anyone, read within bounds as plain data (issue 22,
items 4 and 13): an alias bomb, YAML's boolean keys and 20,000-deep nesting are one line each, in
config files, search spaces and the records of run and search folders."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifarlab.cli import main
from cifarlab.errors import UserError
from crafted import ODD_SETTINGS, alias_bomb

COMMANDS = {  # every command that reads a settings file, as the user types it
    "train-config": ["train", "--config", "{}", "--print-config"],
    "search-config": ["search", "--config", "{}", "--print-space"],
    "search-space": ["search", "--space", "{}", "--print-space"],
}


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("cifarlab: error"), err
    return err


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("name", sorted(set(ODD_SETTINGS) - {"bomb"}))
def test_odd_settings_files_are_one_line(name: str, command: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Keys YAML reads as true/false or numbers, dates, bytes, sets, tags, aliases, 20,000-deep
    lists, a list instead of a mapping: exit 2 and one line (AttributeError and RecursionError
    tracebacks before issue 22)."""
    suffix, text = ODD_SETTINGS[name]
    path = tmp_path / f"settings{suffix}"
    path.write_text(text)
    argv = [arg.replace("{}", str(path)) for arg in COMMANDS[command]]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert str(path) in err or "setting" in err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_alias_bomb_is_refused_at_once(command: str, tmp_path: Path) -> None:
    """~500 bytes of nested aliases (9^9 strings when walked): --print-config and --print-space
    ran past 60 s and 600 MB before issue 22. In a process of its own, so the old behaviour
    fails this test instead of hanging it."""
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert len(path.read_bytes()) < 600
    argv = [arg.replace("{}", str(path)) for arg in COMMANDS[command]]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cifarlab", *argv], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "CIFARLAB_THREADS": "1"})
    assert done.returncode == 2 and "anchors and aliases" in done.stderr, done.stderr[-300:]
    assert len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 30


def test_files_are_bounded_before_they_are_parsed(tmp_path: Path) -> None:
    from cifarlab import plaindata

    big = tmp_path / "big.yaml"
    big.write_text("epochs: 1\n" + "#" * plaindata.MAX_YAML_BYTES)
    with pytest.raises(UserError, match="larger than 256 KB"):
        plaindata.read(big)
    fifo = tmp_path / "fifo.yaml"  # reading it would wait forever
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        plaindata.read(fifo)
    (tmp_path / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(UserError, match="not UTF-8"):
        plaindata.read(tmp_path / "latin1.json")


def test_plain_documents_read_as_before() -> None:
    from cifarlab import plaindata

    text = "lr: 1e-3\naugment: {flip: true, translate: 2}\nmodel_kwargs: {widths: [8, 16]}\n"
    assert plaindata.parse_yaml(text, "x") == {"lr": "1e-3", "augment": {"flip": True, "translate": 2},
                                                "model_kwargs": {"widths": [8, 16]}}
    depth = plaindata.MAX_DEPTH - 1  # lists in the mapping: exactly the limit reads
    deep = "x: " + "[" * depth + "]" * depth
    assert plaindata.parse_yaml(deep, "x")
    assert plaindata.parse_json('{"x": ' + "[" * depth + "]" * depth + "}", "x")
    with pytest.raises(UserError, match="nested more than 32"):
        plaindata.parse_yaml("x: [" + deep[3:] + "]", "x")
    with pytest.raises(UserError, match="nested more than 32"):
        plaindata.parse_json('{"x": [' + "[" * depth + "]" * depth + "]}", "x")


def test_check_fields_names_the_field() -> None:
    from cifarlab import plaindata

    fields = {"classes": list[str], "epoch": int | None, "val_acc": float, "config": dict}
    record = {"classes": ["a"], "epoch": None, "val_acc": 1, "config": {}, "other": object()}
    assert plaindata.check_fields(record, fields, "f") is record  # an int is a fine float
    for key, value, message in [("classes", [1], "a list of texts"), ("epoch", True, "a whole number"),
                                ("val_acc", "0.5", "a number"), ("config", {1: 2}, "a mapping")]:
        with pytest.raises(UserError, match=f"'{key}' should be {message}"):
            plaindata.check_fields({**record, key: value}, fields, "f")
    with pytest.raises(UserError, match="holds a list, not a mapping"):
        plaindata.check_fields([1], fields, "f")
