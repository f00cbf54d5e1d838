"""`cifarlab search`: parse the options, call cl.search, print the trials and the best one."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cifarlab.cli import options
from cifarlab.config import RECIPES, parse_sets


def register(commands: Any) -> None:
    s = commands.add_parser(
        "search", help="hyperparameter search on Optuna: each trial a run, bad ones pruned early",
        description="Search the settings of a recipe with Optuna (TPE by default). Each trial is "
                    "a run directory DIR/trial-NNNN; the objective is its best val_acc (the test "
                    "split is never used); trials that lag the median at the same epoch stop "
                    "early. Writes DIR/best.yaml (rerun: cifarlab train --config DIR/best.yaml), "
                    "trials.csv/json, figures and DIR/search.html. docs/search.md has the details.",
        epilog="Space file (YAML/JSON), one line per setting: lr: {log_uniform: [1e-4, 1e-2]}, "
               "label_smoothing: {uniform: [0, 0.2]}, augment.translate: {int: [0, 3]}, "
               "optimizer: {choice: [adam, sgd]}. --print-space shows the default one.")
    s.add_argument("--recipe", help=f"one of: {', '.join(RECIPES)} (default: the --config file's, else base)")
    s.add_argument("--space", metavar="FILE",
                   help="the search space, YAML or JSON (default: the recipe's own; --print-space)")
    s.add_argument("--print-space", action="store_true",
                   help="print the space that would be searched and exit (default: off)")
    s.add_argument("--trials", type=int, metavar="N",
                   help="finished trials the study should reach (default: 20 unless --budget)")
    s.add_argument("--budget", metavar="TIME",
                   help="wall-clock budget of the search in this folder, e.g. 30m or 2h: no trial "
                        "starts that would not fit (with --trials: whichever comes first) "
                        "(default: none)")
    options.data(s, "$CIFARLAB_DATA, else the official set, downloaded once to ~/.cache/cifarlab")
    s.add_argument("--config", metavar="FILE",
                   help="fixed settings of every trial from a YAML/JSON file (default: none)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed setting of every trial, e.g. --set epochs=8 --set subset=10000 "
                        "(repeatable) (default: the recipe's)")
    options.model(s)
    s.add_argument("--out", metavar="DIR", help="the search folder, new or empty (default: "
                                                "searches/<recipe>-<time>)")
    s.add_argument("--resume", nargs="?", const="", metavar="DIR",
                   help="continue a stopped search (DIR, else --out, else the newest in searches/); "
                        "with --storage and --study, join a study another machine started "
                        "(default: a new search)")
    s.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL, e.g. postgresql://user@host/db, shared by several "
                        "machines (default: sqlite in the search folder)")
    s.add_argument("--study", metavar="NAME", help="study name in the storage (default: the folder's name)")
    s.add_argument("--sampler", choices=["tpe", "random"], default="tpe",
                   help="tpe: models good and bad regions from finished trials; random: the "
                        "baseline (default: tpe)")
    s.add_argument("--pruner", choices=["median", "halving", "none"], default="median",
                   help="median: stop a trial that lags the median of finished trials at the same "
                        "epoch, from epoch 2 on; halving: successive halving, more aggressive "
                        "(default: median)")
    s.add_argument("--sampler-seed", type=int, default=0, metavar="N",
                   help="the sampler's seed (default: 0); the trials' own seed: --set seed=N")
    s.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="N trials at a time, in processes of cores/N threads (default: 1, "
                        "which alone replays a search exactly; on 2 busy cores --jobs 2 ran 2.8x "
                        "faster: docs/search.md)")
    options.mlflow(s, "the study as an MLflow run, each trial a run nested under it")
    options.quiet(s)
    options.json_flag(s)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarlab.errors import UserError

    changes = parse_sets(args.set)
    if args.model is not None:
        changes["model"] = args.model
    if args.print_space:
        return print_space(args, changes)
    for key in ("budget", "max_epochs"):
        if key in changes:
            raise UserError(f"'{key}' cannot be fixed in a search: the search has one budget "
                            "(--budget); fix epochs with --set epochs=N")
    if args.resume is not None and (args.recipe or args.space or args.config or args.set):
        raise UserError("--resume continues a search as it was set up: leave out --recipe, "
                        "--space, --config and --set (--trials, --budget, --data, --jobs may "
                        "change; a search of your own model needs its --model again)")
    import cifarlab as cl

    resume = args.resume is not None
    out = (args.resume or args.out) if resume else args.out
    result = cl.search(args.recipe, space=args.space, trials=args.trials, budget=args.budget,
                       data=args.data, out=out, resume=resume, storage=args.storage,
                       study=args.study, sampler=args.sampler, pruner=args.pruner,
                       sampler_seed=args.sampler_seed,
                       jobs=args.jobs, config_file=args.config, quiet=args.quiet or args.json,
                       mlflow=args.mlflow, **changes)
    if args.json:
        print(json.dumps({"search": str(result.path), "best": result.best,
                          "baseline": result.baseline, "trials": result.rows}, indent=2))
        return 0
    if not args.quiet:
        print()
        print(result.table())
    print(result.verdict())
    if not args.quiet:
        print(f"wrote {result.path / 'search.html'} (figures, trials, best config)")
    return 0


def print_space(args: argparse.Namespace, changes: dict[str, Any]) -> int:
    import yaml

    from cifarlab.config import resolve
    from cifarlab.hpsearch.space import read_space

    base = resolve(args.recipe, args.config, {k: v for k, v in changes.items()})
    params = read_space(args.space, base.recipe, base)
    for p in params:  # one line per setting, as a space file writes it
        print(f"{p.key}: {yaml.safe_dump(p.to_spec(), default_flow_style=True).strip()}")
    return 0
