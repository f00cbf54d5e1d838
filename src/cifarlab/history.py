"""A run's per-epoch metrics (metrics.csv) as Keras users reach for them: rows by position,
columns by name, Keras' names as aliases, and a table in Jupyter.

    >>> from cifarlab.history import History
    >>> h = History([{"epoch": 1, "train_loss": 1.5, "train_acc": 0.4, "val_loss": 1.4, "val_acc": 0.45},
    ...              {"epoch": 2, "train_loss": 1.1, "train_acc": 0.6, "val_loss": 1.2, "val_acc": 0.55}])
    >>> h["val_acc"], h["val_accuracy"], h[-1]["epoch"]
    ([0.45, 0.55], [0.45, 0.55], 2)
    >>> h.history["loss"]                  # keras: history.history['loss']
    [1.5, 1.1]
"""

from __future__ import annotations

import difflib
import math
from typing import Any, SupportsIndex, overload

from cifarlab.display import MAX_TEXT_ROWS, number, table, text_table

# Keras' History.history keys -> cifarlab's metrics.csv columns
KERAS_NAMES = {"loss": "train_loss", "accuracy": "train_acc", "acc": "train_acc",
               "val_accuracy": "val_acc", "learning_rate": "lr"}
SHOWN = ("epoch", "train_loss", "train_acc", "train_acc_clean", "val_loss", "val_acc", "lr",
         "seconds")  # the columns a table shows (train_seconds is in the data, not the display)


def is_number(value: Any) -> bool:
    """A finite int or float: what a measured cell holds (NaN, None or text: not measured)."""
    return isinstance(value, int | float) and math.isfinite(value)


def is_measured(row: dict[str, Any], *keys: str) -> bool:
    """Whether an epoch's row holds a number in each of `keys` (default val_acc): epochs that
    `eval_every` skipped, and every val cell of a run without validation images, hold NaN (an
    empty cell in metrics.csv).

        >>> is_measured({"epoch": 1, "val_acc": float("nan")}), is_measured({"val_acc": 0.5})
        (False, True)
    """
    return all(is_number(row.get(key)) for key in keys or ("val_acc",))


def measured(rows: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """The rows that hold a number in each of `keys` (default val_acc), oldest first.

        >>> nan = float("nan")
        >>> [r["epoch"] for r in measured([{"epoch": 1, "val_acc": nan}, {"epoch": 2, "val_acc": 0.5}])]
        [2]
    """
    return [row for row in rows if is_measured(row, *keys)]


def evaluated(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The epochs that were evaluated: a val accuracy and a clean train accuracy (what the
    diagnosis, the report and `compare` read)."""
    return measured(rows, "val_acc", "train_acc_clean")


class History(list[dict[str, Any]]):
    """The epochs of a run, oldest first: a list of rows (one dict per epoch, as in metrics.csv),
    and its columns by name: `history["val_acc"]` (or Keras' "val_accuracy", "accuracy",
    "loss"), `history.history` (Keras' dict of columns), `history.to_pandas()`.

    Columns: epoch, train_loss and train_acc (running, with dropout and augmentation on, as
    Keras reports them), train_acc_clean (eval mode, on a fixed sample of train), val_loss,
    val_acc, lr, seconds, train_seconds. A value that was not measured is NaN.
    """

    @overload
    def __getitem__(self, key: SupportsIndex) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, key: slice) -> list[dict[str, Any]]: ...

    @overload
    def __getitem__(self, key: str) -> list[Any]: ...

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return [row[self._column(key)] for row in self]
        return super().__getitem__(key)

    @property
    def columns(self) -> list[str]:
        """The column names (metrics.csv's header)."""
        return list(self[0]) if self else list(SHOWN)

    @property
    def history(self) -> dict[str, list[Any]]:
        """{column: values}, as Keras' `History.history`, under cifarlab's names and Keras'."""
        out = {name: self[name] for name in self.columns}
        out.update({keras: out[ours] for keras, ours in KERAS_NAMES.items() if ours in out})
        return out

    def _column(self, key: str) -> str:
        name = KERAS_NAMES.get(key, key)
        if name not in self.columns:
            names = [*self.columns, *KERAS_NAMES]
            match = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f" (did you mean '{match[0]}'?)" if match else ""
            raise KeyError(f"no column '{key}'{hint}; the columns are {', '.join(self.columns)} "
                           f"(and Keras' names {', '.join(KERAS_NAMES)})")
        return name

    def to_pandas(self) -> Any:
        """A pandas DataFrame, one row per epoch, indexed by epoch (needs pandas)."""
        import pandas as pd  # only when asked for: pandas is not a dependency of cifarlab

        return pd.DataFrame(list(self)).set_index("epoch")

    def _rows(self) -> list[list[str]]:
        shown = [c for c in SHOWN if c in self.columns]
        return [[number(row.get(c), 0 if c == "epoch" else 4 if c != "seconds" else 1) for c in shown]
                for row in self]

    def __repr__(self) -> str:
        if not self:
            return "History(no finished epoch)"
        shown = [c for c in SHOWN if c in self.columns]
        rows = self._rows()
        head = rows[:MAX_TEXT_ROWS // 2] + rows[-(MAX_TEXT_ROWS // 2):] if len(rows) > MAX_TEXT_ROWS else rows
        text = text_table(shown, head)
        if len(rows) > MAX_TEXT_ROWS:
            text += f"\n({len(rows)} epochs; the first and last {MAX_TEXT_ROWS // 2} shown)"
        return f"History of {len(self)} epoch{'s' if len(self) != 1 else ''}:\n{text}"

    def _repr_html_(self) -> str:
        shown = [c for c in SHOWN if c in self.columns]
        return table(shown, self._rows(), "n" * len(shown),
                     caption=f"History: {len(self)} epoch{'s' if len(self) != 1 else ''}")
