"""A search, read back from its study: the trials table, the best trial, figures and one page.

    >>> import cifarlab as cl
    >>> s = cl.Search("searches/base-20261130-101500")     # doctest: +SKIP
    >>> print(s.table()); s.best_config.lr; s.plot_history()   # doctest: +SKIP

The figures are our own LabFigures (plots.py), not optuna.visualization.matplotlib: that module
draws with pyplot (a global figure registry and a GUI backend), is marked experimental, and
cannot show what matters here: the pruned trials beside the finished ones, the recipe's own
values as a line, and each trial's val_acc per epoch stopping where the pruner stopped it.
Parameter importance is Optuna's PED-ANOVA evaluator (no scikit-learn needed).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import warnings
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarlab import fsio
from cifarlab.config import TrainConfig
from cifarlab.errors import UserError
from cifarlab.hpsearch.storage import (
    BEST,
    CURVES_PNG,
    HISTORY_PNG,
    IMPORTANCE_PNG,
    PAGE,
    TRIALS_CSV,
    TRIALS_JSON,
    open_study,
    optuna_module,
    read_pointer,
)

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

PathLike = str | os.PathLike[str]


def trial_seconds(trial: optuna.trial.FrozenTrial) -> float:
    if trial.datetime_start is None:
        return 0.0
    end = trial.datetime_complete or datetime.now()
    return (end - trial.datetime_start).total_seconds()


class Search:
    """A search folder, read back from its study: trials, the best one, figures and the page."""

    def __init__(self, path: PathLike, study: optuna.Study | None = None):
        self.path = Path(path)
        if study is None:
            url, name, _ = read_pointer(self.path)
            study = open_study(url, name)
        self.study = study
        self.settings: dict[str, Any] = study.user_attrs["cifarlab"]
        self.params = list(self.settings["space"])

    def __repr__(self) -> str:
        best = self.best
        found = f", best {best['val_acc']:.4f} (trial {best['trial']})" if best else ""
        return f"Search('{self.path}': {self.settings['recipe']}, {len(self.rows)} trials{found})"

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per trial: trial, state, val_acc (best epoch), epochs, of (planned), seconds,
        baseline, note, run, and the searched settings."""
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            values = [v for v in t.intermediate_values.values() if math.isfinite(v)]
            config = t.user_attrs.get("config") or {}
            rows.append({
                "trial": t.number, "state": t.state.name.lower(),
                "val_acc": t.value if t.value is not None and t.state.name == "COMPLETE"
                else (max(values) if values else None),
                "epochs": len(t.intermediate_values), "of": config.get("epochs"),
                "seconds": round(trial_seconds(t), 1), "baseline": bool(t.user_attrs.get("baseline")),
                "note": t.user_attrs.get("note", ""), "run": t.user_attrs.get("run", ""),
                **{key: t.params.get(key) for key in self.params},
            })
        return rows

    @property
    def best(self) -> dict[str, Any] | None:
        """The finished trial with the highest val_acc (pruned trials never win), or None."""
        done = [r for r in self.rows if r["state"] == "complete"]
        return max(done, key=lambda r: (r["val_acc"], -r["trial"])) if done else None

    @property
    def baseline(self) -> dict[str, Any] | None:
        """Trial 0 when it ran the recipe's own values (within the fixed settings)."""
        return next((r for r in self.rows if r["baseline"] and r["state"] == "complete"), None)

    @property
    def best_config(self) -> TrainConfig:
        best = self.best
        if best is None:
            raise UserError(f"{self.path} has no finished trial yet")
        trial = self.study.trials[best["trial"]]
        return TrainConfig.from_dict(trial.user_attrs["config"])

    def best_run(self) -> Any:
        """The best trial's run directory as a Run (on the machine that trained it)."""
        from cifarlab.api import Run

        best = self.best
        if best is None:
            raise UserError(f"{self.path} has no finished trial yet")
        return Run(best["run"])

    def importances(self) -> dict[str, float]:
        """Each setting's share of what made the best trials good (PED-ANOVA: how far the best
        quarter of the finished trials differs from all of them). Needs 2 finished trials; with
        few trials it is a hint, not a measurement."""
        optuna = optuna_module()
        done = [r for r in self.rows if r["state"] == "complete"]
        if len(done) < 2:
            return {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.25)
            except TypeError:  # optuna 3.6 names it baseline_quantile
                evaluator = optuna.importance.PedAnovaImportanceEvaluator(baseline_quantile=0.25)
            try:
                return dict(optuna.importance.get_param_importances(self.study, evaluator=evaluator))
            except (RuntimeError, ValueError, ZeroDivisionError):
                return {}

    # ------------------------------------------------------------------------------------------
    # Text

    def header(self, trials: int | None, seconds: float | None, spent: float, jobs: int) -> str:
        s = self.settings
        stop = " and ".join(x for x in (f"{trials} trials" if trials else "",
                                        f"a budget of {seconds / 60:.0f} min" if seconds else "") if x)
        spent_note = f" ({spent / 60:.1f} min spent before)" if spent else ""
        fixed = ", ".join(f"{k}={v}" for k, v in s["fixed"].items() if k != "data") or "none"
        return (f"search {self.path}: recipe {s['recipe']}, {len(self.params)} settings "
                f"({', '.join(self.params)}), {s['sampler']} sampler (seed {s['seed']}), "
                f"{s['pruner']} pruner, up to {stop}{spent_note}"
                + (f", {jobs} trials at a time" if jobs > 1 else "") + f"; fixed: {fixed}")

    def row_line(self, trial: optuna.trial.FrozenTrial) -> str:
        row = next(r for r in self.rows if r["trial"] == trial.number)
        best = self.best
        acc = f"{row['val_acc']:.4f}" if row["val_acc"] is not None else "  -   "
        lead = f"best {best['val_acc']:.4f} (trial {best['trial']})" if best else ""
        settings = " ".join(f"{k}={_short(row[k])}" for k in self.params)
        return (f"trial {row['trial']:>4} {row['state']:<8} val_acc {acc} {row['epochs']:>3}/"
                f"{row['of'] or '?'} epochs {row['seconds']:>6.0f} s  {lead}  {settings}"
                + (f"  [{row['note']}]" if row["note"] else ""))

    def table(self, fmt: str = "table") -> str:
        """The trials, best first: fmt "table" (fixed columns), "csv" or "json"."""
        rows = sorted(self.rows, key=lambda r: (r["val_acc"] is None, -(r["val_acc"] or 0), r["trial"]))
        if fmt == "json":
            return json.dumps(rows, indent=2)
        if fmt == "csv":
            buffer = io.StringIO()
            columns = list(self.rows[0]) if self.rows else ["trial"]
            writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(sorted(self.rows, key=lambda r: r["trial"]))
            return buffer.getvalue()
        header = ["trial", "state", "val_acc", "epochs", "min", *self.params, "note"]
        cells = [[str(r["trial"]) + ("*" if r["baseline"] else ""), r["state"],
                  f"{r['val_acc']:.4f}" if r["val_acc"] is not None else "-",
                  f"{r['epochs']}/{r['of'] or '?'}", f"{r['seconds'] / 60:.1f}",
                  *(_short(r[k]) for k in self.params), r["note"]] for r in rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
                  for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
        if any(r["baseline"] for r in rows):
            lines.append("* the recipe's own values")
        return "\n".join(line.rstrip() for line in lines)

    def verdict(self) -> str:
        """The result in two lines: the best trial against the recipe's values, and the cost."""
        best, base, rows = self.best, self.baseline, self.rows
        if best is None:
            return f"no finished trial yet in {self.path}"
        versus = (f" vs {base['val_acc']:.4f} with the recipe's own values (trial {base['trial']})"
                  if base and base["trial"] != best["trial"] else
                  " (the recipe's own values)" if base else "")
        finished = [r for r in rows if r["state"] in ("complete", "pruned")]
        trained = sum(r["epochs"] for r in finished)
        planned = sum(r["of"] or r["epochs"] for r in finished)
        pruned = sum(r["state"] == "pruned" for r in rows)
        failed = len(rows) - len(finished)
        minutes = sum(r["seconds"] for r in rows) / 60
        return (f"best: trial {best['trial']}, val_acc {best['val_acc']:.4f}{versus}\n"
                f"{len(finished)} trials finished ({pruned} pruned: {trained} of {planned} epochs "
                f"trained){f', {failed} failed or running' if failed else ''}; {minutes:.1f} min "
                f"of trials. Rerun the best: cifarlab train --config {self.path / BEST}")

    # ------------------------------------------------------------------------------------------
    # Figures (LabFigures: Jupyter shows them inline)

    def plot_history(self) -> Figure:
        """Each trial's best val_acc in order, pruned ones grey, and the best so far as a line."""
        from matplotlib.ticker import MaxNLocator

        from cifarlab.plots import LabFigure

        fig = LabFigure(figsize=(9, 4.8), layout="constrained")
        ax = fig.subplots()
        rows = [r for r in self.rows if r["val_acc"] is not None]
        for state, color, marker, label in (
                ("complete", "tab:blue", "o", "finished"),
                ("pruned", "gray", "x", "pruned (its best epoch before it stopped)")):
            chosen = [r for r in rows if r["state"] == state]
            if chosen:
                ax.scatter([r["trial"] for r in chosen], [r["val_acc"] for r in chosen], color=color,
                           marker=marker, label=label)
        done = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: r["trial"])
        if done:
            best_so_far = [max(r["val_acc"] for r in done[: i + 1]) for i in range(len(done))]
            ax.step([r["trial"] for r in done], best_so_far, where="post", color="tab:orange",
                    label="best so far")
        base = self.baseline
        if base:
            ax.axhline(base["val_acc"], color="tab:green", linestyle=":",
                       label=f"the recipe's own values: {base['val_acc']:.4f}")
        ax.set(title=f"Optimisation history: {self.path.name}", xlabel="trial",
               ylabel="best val accuracy of the trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if rows:
            ax.legend(loc="lower right", fontsize=9)
        return fig

    def plot_importance(self) -> Figure:
        """How much each searched setting mattered (PED-ANOVA); a note while fewer than 2 trials
        have finished."""
        from cifarlab.plots import LabFigure

        importances = self.importances()
        fig = LabFigure(figsize=(8, 0.9 + 0.45 * max(1, len(self.params))), layout="constrained")
        ax = fig.subplots()
        if not importances:
            ax.text(0.5, 0.5, "parameter importance needs at least 2 finished trials",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            return fig
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set(title="Parameter importance (PED-ANOVA: best quarter of trials vs all)",
               xlabel="share of importance", xlim=(0, 1))
        ax.grid(alpha=0.3, axis="x")
        return fig

    def plot_curves(self) -> Figure:
        """val_acc per epoch of every trial: pruned trials (grey) stop early."""
        from matplotlib.ticker import MaxNLocator

        from cifarlab.plots import LabFigure

        fig = LabFigure(figsize=(9, 4.8), layout="constrained")
        ax = fig.subplots()
        best = self.best
        for t in self.study.get_trials(deepcopy=False):
            steps = sorted(t.intermediate_values)
            if not steps:
                continue
            is_best = best is not None and t.number == best["trial"]
            done = t.state.name == "COMPLETE"
            ax.plot(steps, [t.intermediate_values[s] for s in steps],
                    "-" if done else "--" if t.state.name == "PRUNED" else ":",
                    color="tab:orange" if is_best else "tab:blue" if done else "gray",
                    alpha=1.0 if is_best else 0.55, linewidth=2.2 if is_best else 1.0,
                    label=f"best: trial {t.number}" if is_best else None)
        ax.set(title="Validation accuracy per epoch of each trial\n(pruned: grey dashed; failed "
                     "or still running: grey dotted)",
               xlabel="epoch", ylabel="val accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if best:
            ax.legend(loc="lower right", fontsize=9)
        return fig

    # ------------------------------------------------------------------------------------------
    # Files

    def write_tables(self) -> None:
        """trials.csv, trials.json and best.yaml (rewritten after every trial)."""
        fsio.write_text(self.path / TRIALS_CSV, self.table("csv"))
        fsio.write_json(self.path / TRIALS_JSON, {"settings": self.settings, "best": self.best,
                                                  "baseline": self.baseline, "trials": self.rows})
        best = self.best
        if best is not None:
            import yaml

            head = (f"# cifarlab search {self.path.name}: trial {best['trial']}, best val_acc "
                    f"{best['val_acc']:.4f} in {best['epochs']} epochs\n"
                    f"# rerun it: cifarlab train --config {self.path / BEST}\n")
            body = yaml.safe_dump(self.best_config.to_dict(), sort_keys=False)
            fsio.write_text(self.path / BEST, head + body)

    def write(self) -> Path:
        """The tables, the three figures and search.html; returns the page's path."""
        from cifarlab.plots import to_png

        self.write_tables()
        figures = {HISTORY_PNG: self.plot_history(), IMPORTANCE_PNG: self.plot_importance(),
                   CURVES_PNG: self.plot_curves()}
        pngs = {name: to_png(fig) for name, fig in figures.items()}
        for name, png in pngs.items():
            fsio.write_bytes(self.path / name, png)
        fsio.write_text(self.path / PAGE, self.render_html(pngs))
        return self.path / PAGE

    def render_html(self, pngs: dict[str, bytes]) -> str:
        """One self-contained page: figures inline, the table, the best config; nothing fetched."""
        from cifarlab.display import table
        from cifarlab.report import page

        e = html.escape

        def figure(name: str, caption: str) -> str:
            data = base64.b64encode(pngs[name]).decode()
            return (f'<figure><img src="data:image/png;base64,{data}" alt="{e(caption)}">'
                    f"<figcaption>{e(caption)}</figcaption></figure>")

        s, best = self.settings, self.best
        rows = sorted(self.rows, key=lambda r: r["trial"])
        cells = [[f"{r['trial']}" + (" (recipe's values)" if r["baseline"] else ""), r["state"],
                  f"{r['val_acc']:.4f}" if r["val_acc"] is not None else "-",
                  f"{r['epochs']}/{r['of'] or '?'}", f"{r['seconds']:.0f}",
                  *(_short(r[k]) for k in self.params), r["note"],
                  os.path.relpath(r["run"], self.path) if r["run"] else ""] for r in rows]
        space = [[k, json.dumps(v)] for k, v in s["space"].items()]
        fixed = [[k, json.dumps(v)] for k, v in s["fixed"].items()]
        parts = [f"<h1>Search {e(self.path.name)}</h1>",
                 f'<p class="sub">recipe {e(s["recipe"])}, {e(s["sampler"])} sampler (seed '
                 f'{s["seed"]}), {e(s["pruner"])} pruner; objective: best val_acc of each trial '
                 "(validation split only)</p>",
                 "<div class=diagnosis>" + "<br>".join(e(x) for x in self.verdict().splitlines())
                 + "</div>",
                 figure(HISTORY_PNG, "Optimisation history"),
                 figure(CURVES_PNG, "Validation accuracy per epoch of each trial"),
                 figure(IMPORTANCE_PNG, "Parameter importance"),
                 "<h2>Trials</h2>",
                 table(["trial", "state", "val_acc", "epochs", "seconds", *self.params, "note", "run"],
                       cells, "tttnn" + "t" * len(self.params) + "ll"),
                 "<h2>Search space</h2>", table(["setting", "range"], space, "tl"),
                 "<h2>Fixed settings</h2>",
                 table(["setting", "value"], fixed, "tl") if fixed else "<p>none</p>"]
        if best is not None:
            config = [[k, json.dumps(v)] for k, v in self.best_config.to_dict().items()]
            parts += [f"<h2>Best config (trial {best['trial']}): {e(BEST)}</h2>",
                      table(["setting", "value"], config, "tl")]
        return page(f"cifarlab search: {self.path.name}", parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)
