"""Settings files and records that may come from anyone, read as plain data, within bounds.

Config files, search spaces, `best.yaml`, `search.json`, a run's `config.json` and `summary.json`,
`robustness.json`: whoever wrote them, reading one costs what its size says, and what comes back
is plain data: mappings with text keys, lists, text, numbers, true/false and null, nested at most
MAX_DEPTH deep. Everything else is one line of UserError:

- YAML anchors and aliases (`&a`, `*a`) are refused while the file is read: an alias is a pointer,
  so 500 bytes of nested aliases stand for 9^9 strings once anything walks them (a config of that
  kind ran `--print-config` out of memory before issue 22). Settings files never need them.
- YAML 1.1 reads `on`, `off`, `yes` and `no` as true/false and `2024-01-01` as a date: a key that
  is not text, or a value that is not JSON's kind (a date, bytes, a set), is named, with the fix.
- Nesting is counted as the file is read, before Python recurses into it (20,000 nested lists
  were a RecursionError traceback), and a file over MAX_BYTES is refused before it is parsed.

`check_fields` is the other half: a record's fields (a model file's metadata, a stored config) have
the types their readers assume, or the record is refused in one line before anything uses it.

    >>> from cifarlab import plaindata
    >>> plaindata.parse_yaml("lr: 1e-3\\naugment: {flip: true}", "x.yaml")
    {'lr': '1e-3', 'augment': {'flip': True}}
"""

from __future__ import annotations

import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

from cifarlab.errors import UserError

# Settings files are a few KB (a full config 1.5 KB, best.yaml 2 KB, config.json 3 KB); a run's
# summary.json 1 KB; robustness.json 3 KB. JSON is read by C code: 1 MB takes milliseconds. YAML is
# read by pure Python (so that aliases can be refused), ~7 s a MB on a busy core: 256 KB, ~2 s.
MAX_BYTES = 1 << 20
MAX_YAML_BYTES = 256 << 10
MAX_DEPTH = 32  # lists and mappings in each other: settings nest 3 (model_kwargs: {x: [..]})


def read(path: str | os.PathLike[str], what: str = "file") -> Any:
    """The plain data in a YAML or JSON file (by its suffix: .json is JSON, anything else YAML,
    which JSON is a part of); a missing, oversized, undecodable or odd file is a UserError."""
    if Path(path).suffix.lower() == ".json":
        return parse_json(read_text(path, what), str(path))
    return parse_yaml(read_text(path, what, MAX_YAML_BYTES), str(path))


def read_text(path: str | os.PathLike[str], what: str = "file", limit: int = MAX_BYTES) -> str:
    """A regular file's text, at most `limit` bytes (a FIFO or a device would never end)."""
    path = Path(path)
    try:
        if not path.is_file():
            raise UserError(f"cannot read the {what} {path}: "
                            + ("not a regular file" if path.exists() else "no such file"))
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UserError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise UserError(f"the {what} {path} is larger than {limit >> 10:,} KB; cifarlab writes and "
                        "reads such files of a few KB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"the {what} {path} is not UTF-8 text") from None


def parse_json(text: str, where: str) -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        raise UserError(f"{where} is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, and integers of more than 4,300 digits
        raise UserError(f"{where} is not valid JSON: {exc}") from None
    return check(value, where)


def parse_yaml(text: str, where: str) -> Any:
    import yaml

    try:
        value = yaml.load(text, Loader=_loader())  # SafeLoader, minus anchors and aliases
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where} is not valid YAML: {_problem(exc) or first}") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4,300 digits
        raise UserError(f"{where} is not valid YAML: {exc}") from None
    return check(value, where)


def _problem(exc: Any) -> str:
    """A YAML error in one line: what, and where (line and column, counted from 1)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem:
        return ""
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


_LOADER: Any = None


def _loader() -> Any:
    """yaml.SafeLoader that refuses anchors and aliases and counts the nesting as it composes.
    (libyaml's CSafeLoader composes in C, where neither can be checked: this one is Python.)"""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml
    from yaml.composer import ComposerError

    class PlainLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise ComposerError(None, None, "anchors and aliases (&name, *name) are not read "
                                    "by cifarlab: write the values out", event.start_mark)
            opens = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
            if opens and self.depth >= MAX_DEPTH:
                raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                    event.start_mark)
            self.depth += opens
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= opens

    _LOADER = PlainLoader
    return _LOADER


PLAIN = (str, int, float, bool, type(None))


def check(value: Any, where: str) -> Any:
    """`value` if it is plain data (text keys; no dates, bytes or sets; lists and mappings at most
    MAX_DEPTH levels deep), else a UserError that names the first odd part. Walked without
    recursion. `depth` below: the lists and mappings around an item."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, at, depth = stack.pop()
        if isinstance(item, dict | list) and depth >= MAX_DEPTH:
            raise UserError(f"{where} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    hint = (" (YAML reads on/off/yes/no as true/false: quote the key)"
                            if isinstance(key, bool) else " (quote it)")
                    raise UserError(f"{where}: the key {key!r}{_at(at)} is not text{hint}")
                stack.append((inner, f"{at}.{key}" if at else key, depth + 1))
        elif isinstance(item, list):
            stack.extend((inner, f"{at}[{i}]", depth + 1) for i, inner in enumerate(item))
        elif not isinstance(item, PLAIN):
            hint = " (quote it to mean the text)" if type(item).__name__ in ("date", "datetime") else ""
            raise UserError(f"{where}: {_at(at, 'the value').strip()} is a {type(item).__name__}, "
                            f"not text, a number, true/false, null, a list or a mapping{hint}")
    return value


def _at(path: str, noun: str = "") -> str:
    if not path:
        return f" {noun}".rstrip() if noun else ""
    return f" {noun} of '{path}'" if noun else f" in '{path}'"


# ---------------------------------------------------------------------------------------------
# Typed fields of a record


def check_fields(record: Any, fields: dict[str, Any], where: str, within: str = "") -> dict[str, Any]:
    """`record` if it is a mapping whose fields named in `fields` have their types, else a
    UserError naming the first that does not ("{where} is damaged: 'within.key' should be ...").
    A missing field is fine (older files lack some).

    Types: bool, int (not bool), float (any int or float, nan and inf too), str, dict (text
    keys), dict[str, X], list[X], X | None, typing.Any. `fields` may be a dataclass's type hints.
    """
    if not isinstance(record, dict):
        what = f"'{within}'" if within else "it"
        raise UserError(f"{where} is damaged: {what} holds a {type(record).__name__}, not a mapping")
    for key, kind in fields.items():
        if key in record and not has_type(record[key], kind):
            name = f"{within}.{key}" if within else key
            raise UserError(f"{where} is damaged: '{name}' should be {type_words(kind)}, not "
                            f"{_short(record[key])}")
    return record


def has_type(value: Any, kind: Any) -> bool:
    """Whether `value` has the type `kind` (as check_fields reads types)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(has_type(value, arg) for arg in args)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if kind is dict or origin is dict:
        inner = args[1] if len(args) == 2 else Any
        return isinstance(value, dict) and all(
            isinstance(k, str) and has_type(v, inner) for k, v in value.items())
    if kind is list or origin is list:
        return isinstance(value, list) and all(has_type(v, args[0] if args else Any) for v in value)
    return isinstance(value, kind)


def type_words(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_words(arg) for arg in args)
    if origin is list:
        return f"a list of {type_words(args[0]).removeprefix('a ').removeprefix('an ')}s"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a text",
             dict: "a mapping", list: "a list", type(None): "null"}
    return names.get(origin or kind, f"a {getattr(kind, '__name__', kind)}")


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def finite(value: Any) -> bool:
    """A number (not true/false) that is neither nan nor infinite."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))
