"""How cifarlab's objects show themselves: a few lines of text for `repr()` and a terminal, and an
HTML table for Jupyter (`_repr_html_`) and the report's page. No torch, no matplotlib.

    >>> from cifarlab.display import table
    >>> table(["class", "acc"], [["cat", "0.51"]], "tn").startswith('<div class="scroll"><table>')
    True
"""

from __future__ import annotations

import html
import math
import sys
from collections.abc import Sequence
from typing import Any

MAX_TEXT_ROWS = 8  # a repr shows at most this many rows of a long table, and says how many more


def table(header: Sequence[str], rows: Sequence[Sequence[str]], kinds: str,
          caption: str | None = None) -> str:
    """An HTML table; `kinds` has a letter per column: t text, n number (right, unbroken),
    l long text. Every cell is escaped: class names and paths are text, never markup."""
    css = {"t": "", "n": ' class="num" style="text-align:right"', "l": ' class="long"'}

    def cell(tag: str, text: str, kind: str) -> str:
        return f"<{tag}{css[kind]}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", h, k) for h, k in zip(header, kinds, strict=True))
    body = "".join("<tr>" + "".join(cell("td", c, k) for c, k in zip(row, kinds, strict=True)) + "</tr>"
                   for row in rows)
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (f'<div class="scroll"><table>{title}<thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def fields(title: str, pairs: Sequence[tuple[str, str]]) -> str:
    """A titled two-column table of name and value, for one object's figures."""
    body = "".join(f"<tr><th style=\"text-align:left\">{html.escape(name)}</th>"
                   f"<td class=\"long\">{html.escape(value)}</td></tr>" for name, value in pairs)
    return f"<table><caption>{html.escape(title)}</caption><tbody>{body}</tbody></table>"


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], limit: int | None = None) -> str:
    """Aligned plain text; with `limit`, the first rows and a line saying how many are left out."""
    shown = list(rows if limit is None or len(rows) <= limit else rows[:limit])
    widths = [max(len(str(c)) for c in column) for column in zip(header, *shown, strict=True)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True))
             for row in [list(header), *shown]]
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more")
    return "\n".join(lines)


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (where figures and tables display inline)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(**options: Any) -> Any:
    """tqdm's bar: a widget in a notebook that has ipywidgets, else text (tqdm.auto would warn
    "IProgress not found" in a notebook without them; this degrades without a word)."""
    if in_notebook():
        import importlib.util

        if importlib.util.find_spec("ipywidgets") is not None:
            from tqdm.notebook import tqdm as notebook_bar

            return notebook_bar(**options)
    from tqdm import tqdm

    return tqdm(**options)


def number(value: Any, digits: int = 4) -> str:
    """A figure as people read it: 4 decimals, ints as ints, "-" where nothing was measured."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
