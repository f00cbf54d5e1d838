"""`cifarlab train`: the settings as given (recipe < --config < flags and --set; config.py
resolves them, as it does for cl.train), then cl.train, cl.train_seeds or cl.resume."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cifarlab.cli import options
from cifarlab.config import RECIPES, parse_sets
from cifarlab.errors import UserError


def per_recipe(key: str, fmt: str = "{}") -> str:
    """"the recipe's: base 15, robust 15, ..." so that --help shows every recipe's own value."""
    values = ", ".join(f"{name} {fmt.format(r.settings[key])}" for name, r in RECIPES.items())
    return f"the recipe's: {values}"


def register(commands: Any) -> None:
    t = commands.add_parser(
        "train", help="train a recipe or your own model and write a run directory",
        description="Train a recipe. Settings come from the recipe, then --config FILE, then the "
                    "flags and --set (later wins). Options left out keep the recipe's value; "
                    "--list-recipes shows each recipe's settings, --print-config all of them.",
        epilog="Every setting: --set key=value, e.g. --set optimizer=sgd --set augment.flip=true "
               "--set model_kwargs.width=64; --print-config shows them all. "
               "Example: cifarlab train --recipe base --data ../shared/data/cifar10-train-jpeg.tgz")
    t.add_argument("--recipe", help=f"one of: {', '.join(RECIPES)} (default: the --config file's, "
                                    "else base)")
    t.add_argument("--list-recipes", action="store_true",
                   help="list the recipes and exit (default: off)")
    options.data(t, "$CIFARLAB_DATA, else the official set, downloaded once to ~/.cache/cifarlab")
    t.add_argument("--config", metavar="FILE",
                   help="settings from a YAML or JSON file; a run's config.json reruns that run "
                        "(default: none)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, typed by its field (repeatable; nested: augment.flip=true) "
                        "(default: none)")
    t.add_argument("--print-config", action="store_true",
                   help="print the resolved settings and exit (default: off)")
    options.model(t, "the recipe's registered model")
    t.add_argument("--epochs", type=int, help=f"number of epochs (default: {per_recipe('epochs')})")
    t.add_argument("--batch-size", type=int,
                   help="images per step; SGD recipes scale their lr with it unless --lr is given "
                        f"(default: {per_recipe('batch_size')})")
    t.add_argument("--lr", type=float,
                   help=f"learning rate (default: {per_recipe('lr', '{:g}')})")
    t.add_argument("--val-fraction", type=float,
                   help="share of train held out for validation, per class; 0: the final fit on "
                        "all training images, with no validation (default: 0.1)")
    t.add_argument("--seed", type=int, help="seed for init, order, augmentation, dropout (default: 0)")
    t.add_argument("--subset", type=int, metavar="N",
                   help="train on a seeded random N of the training images only (default: all)")
    t.add_argument("--monitor", choices=["val_acc", "val_loss"],
                   help="metric that picks the best weights (best.pt) and drives --early-stop "
                        "(default: val_acc)")
    t.add_argument("--early-stop", type=int, metavar="N",
                   help="stop after N epochs without a better --monitor (default: 0, never)")
    t.add_argument("--budget", metavar="TIME",
                   help="fit training plus evaluation into this wall-clock time (e.g. 90s, 10m, "
                        "1h): the epochs are sized from the speed measured on this machine; "
                        "--epochs then caps them (default: none)")
    t.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train N runs with seeds S, S+1, ... (S: --seed) into DIR/seed-S and "
                        "report mean +- std (default: 1)")
    t.add_argument("--trials", type=int, dest="seeds", help=argparse.SUPPRESS)  # the old name
    t.add_argument("--out", metavar="DIR",
                   help="run directory, new or empty (default: runs/<recipe>-<time>)")
    t.add_argument("--resume", nargs="?", const="", metavar="DIR",
                   help="continue an interrupted run (DIR, else --out, else the newest in runs/); "
                        "with --epochs N, extend a run that has a constant schedule (default: "
                        "start a new run)")
    options.device(t, default=None)
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N processes on this machine (DistributedDataParallel, one per "
                        "GPU); --batch-size stays the global batch. Same as: torchrun "
                        "--standalone --nproc-per-node N -m cifarlab train ... (default: 1)")
    t.add_argument("--checkpoint-every", type=int, metavar="K",
                   help="also save a resumable checkpoint every K steps, not only every epoch "
                        "(default: 0, every epoch)")
    t.add_argument("--tensorboard", action="store_true",
                   help="also log to RUN/tensorboard (needs: pip install tensorboard) (default: off)")
    options.json_flag(t, "print summary.json when done, instead of the progress table (implies "
                         "--quiet)")
    options.quiet(t)
    t.set_defaults(func=run)


FLAGS = ("data", "epochs", "batch_size", "lr", "val_fraction", "seed", "subset", "monitor",
         "early_stop", "device", "checkpoint_every")


def changes_from(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave: --set first, then the named flags over them."""
    changes = parse_sets(args.set)
    changes.update({k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None})
    if args.tensorboard:
        changes["tensorboard"] = True
    if args.model is not None:
        changes["model"] = args.model
    if args.budget is not None:  # "10m": config.py reads it, and makes --epochs its cap
        changes["budget"] = args.budget
    return changes


def run(args: argparse.Namespace) -> int:
    if args.list_recipes:
        return list_recipes()
    args.quiet = args.quiet or args.json
    changes = changes_from(args)
    if args.resume is not None:
        return resume(args, changes)
    if args.print_config:
        from cifarlab.config import resolve

        print(json.dumps(resolve(args.recipe, args.config, changes).to_dict(), indent=2))
        return 0
    import cifarlab as cl

    model = changes.pop("model", None)
    common = {"recipe": args.recipe, "config_file": args.config, "out": args.out,
              "quiet": args.quiet, "model": model}
    if args.seeds != 1:
        cl.train_seeds(n=args.seeds, seed=changes.pop("seed", 0), nproc=args.nproc, **common,
                       **changes)
        return 0
    run = cl.train(nproc=args.nproc, **common, **changes)
    done(args, run)
    return 0


def done(args: argparse.Namespace, run: Any) -> None:
    """The result: summary.json with --json, two lines of text unless --quiet."""
    if args.json:
        print(json.dumps(run.results))
    elif not args.quiet:
        print_done(run.results)


def resume(args: argparse.Namespace, changes: dict[str, Any]) -> int:
    import cifarlab as cl
    from cifarlab import rundir

    if args.recipe or args.config or args.print_config or args.seeds != 1:
        raise UserError("--resume continues a run as it was configured: leave out --recipe, "
                        "--config, --print-config and --seeds")
    path = Path(args.resume) if args.resume else Path(args.out) if args.out else rundir.latest()
    model = changes.pop("model", None)
    run = cl.resume(path, model=model, quiet=args.quiet, nproc=args.nproc, **changes)
    done(args, run)
    return 0


def list_recipes() -> int:
    width = max(len(name) for name in RECIPES)
    for recipe in RECIPES.values():
        s = recipe.settings
        print(f"{recipe.name:<{width}} {recipe.description}\n{'':<{width}} model {s['model']}, "
              f"{s['optimizer']} lr {s['lr']:g}, batch {s['batch_size']}, {s['epochs']} epochs")
    return 0


def print_done(summary: dict[str, Any]) -> None:
    if not summary:
        return
    if summary.get("val_acc") is None:  # --val-fraction 0
        print(f"done: train_acc {summary['train_acc']:.4f} (clean {summary['train_acc_clean']:.4f}), "
              f"no validation, {summary['seconds_per_epoch']:.1f} s/epoch, "
              f"{summary['wall_seconds']:.0f} s in all")
        print(f"weights: model.pt = epoch {summary['final_epoch']}; --weights best uses it too "
              "(no validation images to pick a best epoch)")
        return
    tta = f", with TTA {summary['val_acc_tta']:.4f}" if "val_acc_tta" in summary else ""
    print(f"done: val_acc {summary['val_acc']:.4f}{tta} (best {summary['best_val_acc']:.4f} at "
          f"epoch {summary['best_epoch']}), train_acc {summary['train_acc']:.4f} "
          f"(clean {summary['train_acc_clean']:.4f}), {summary['seconds_per_epoch']:.1f} s/epoch, "
          f"{summary['wall_seconds']:.0f} s in all")
    if "best_weights_epoch" in summary:
        print(f"weights: best.pt = epoch {summary['best_weights_epoch']} (by "
              f"{summary['monitor']}), model.pt = epoch {summary['final_epoch']}"
              + (" (stopped early)" if summary.get("stopped_early") else ""))
