"""The `cifarlab` command line: train, evaluate, predict, data.

Examples:
    cifarlab train --recipe base --data ../shared/data/cifar10-train-jpeg.tgz
    cifarlab train --recipe bn --nproc 2 --checkpoint-every 100     # 2 processes (DDP)
    cifarlab train --list-recipes
    cifarlab evaluate runs/base-20261122-101500 --split val --json
    cifarlab predict runs/base-20261122-101500 my_cat.jpg photos/ --top-k 3
    cifarlab data --data ../shared/data/cifar10-train-jpeg.tgz

User mistakes (a missing file, a corrupt archive, an unknown recipe ...) print one line on stderr
and exit with code 2; a training failure such as a NaN loss exits with 1; Ctrl-C during training
saves a resumable checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from cifarlab import __version__, report_cli, serve_cli
from cifarlab.errors import Interrupted, TrainingError, UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_data_arg(parser: argparse.ArgumentParser, help_extra: str = "") -> None:
    parser.add_argument(
        "--data", metavar="SRC",
        help="cifar-10-python.tar.gz, a cifar-10-batches-py folder, or an image folder "
             "(ROOT/{train,test}/<class>/*.png) or .tgz/.zip of one; default: $CIFARLAB_DATA, "
             "else the official set, downloaded once to ~/.cache/cifarlab" + help_extra)


def build_parser() -> argparse.ArgumentParser:
    from cifarlab.recipes import RECIPES

    parser = argparse.ArgumentParser(
        prog="cifarlab", description="Train, diagnose and compare small image classifiers.")
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = commands.add_parser("train", help="train a recipe and write a run directory",
                            description="Train a recipe. Options left out keep the recipe's value.")
    t.add_argument("--recipe", default="base", help=f"one of: {', '.join(RECIPES)} (default: base)")
    t.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
    _add_data_arg(t)
    t.add_argument("--epochs", type=int, help="number of epochs")
    t.add_argument("--batch-size", type=int,
                   help="images per step (SGD recipes scale their lr with it unless --lr is given)")
    t.add_argument("--lr", type=float, help="learning rate")
    t.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of train held out for validation, per class (default: 0.1)")
    t.add_argument("--seed", type=int, default=0, help="seed for init, order, augmentation, dropout")
    t.add_argument("--subset", type=int, metavar="N",
                   help="train on a seeded random N of the training images only")
    t.add_argument("--budget", metavar="TIME",
                   help="fit training plus evaluation into this wall-clock time (e.g. 90s, 10m, "
                        "1h): the epochs are sized from the speed measured on this machine; "
                        "--epochs then caps them")
    t.add_argument("--trials", type=int, default=1, metavar="N",
                   help="train N runs with seeds S, S+1, ... into DIR/seed-S and report mean +- "
                        "std (default: 1)")
    t.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: runs/<recipe>-<time>)")
    t.add_argument("--resume", nargs="?", const="", metavar="DIR",
                   help="continue an interrupted run (DIR, else --out, else the newest in runs/)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to train (default: auto = cuda if available)")
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N processes on this machine (DistributedDataParallel, one per "
                        "GPU); --batch-size stays the global batch. Same as: torchrun "
                        "--standalone --nproc-per-node N -m cifarlab train ... (default: 1)")
    t.add_argument("--checkpoint-every", type=int, metavar="K",
                   help="also save a resumable checkpoint every K steps, not only every epoch "
                        "(default: every epoch; on --resume: what the run used)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.set_defaults(func=cmd_train)

    e = commands.add_parser("evaluate", help="accuracy, loss and per-class accuracy of a model")
    e.add_argument("model", metavar="RUN_OR_CKPT", help="run directory or model.pt")
    _add_data_arg(e, " (default: the data the run trained on)")
    e.add_argument("--split", choices=["test", "val", "train"],
                   help="split to evaluate (default: test if the source has one, else val)")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                   help="test-time augmentation: average 6 flipped/shifted views (6x slower)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("predict", help="classify your own images")
    p.add_argument("model", metavar="RUN_OR_CKPT", help="run directory or model.pt")
    p.add_argument("images", metavar="IMAGE_OR_DIR", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default: 3)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_predict)

    d = commands.add_parser("data", help="describe a data source: kind, splits, images per class")
    _add_data_arg(d)
    d.add_argument("--val-fraction", type=float, default=0.1)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_data)

    report_cli.register(commands)
    serve_cli.register(commands)
    return parser


# The `train` options a worker started by --nproc gets again (all of them but --nproc).
_TRAIN_OPTIONS = ("recipe", "data", "epochs", "batch_size", "lr", "val_fraction", "seed", "subset",
                  "out", "device", "checkpoint_every")


def _worker_argv(args: argparse.Namespace) -> list[str]:
    argv = ["train"]
    for name in _TRAIN_OPTIONS:
        if getattr(args, name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.resume is not None:
        argv += ["--resume", args.resume] if args.resume else ["--resume"]
    return argv + (["--quiet"] if args.quiet else [])


def cmd_train(args: argparse.Namespace) -> int:
    from cifarlab import distributed
    from cifarlab.recipes import list_recipes

    if args.list_recipes:
        width = max(len(r.name) for r in list_recipes())
        for recipe in list_recipes():
            s = recipe.settings
            print(f"{recipe.name:<{width}} {recipe.description}\n{'':<{width}} model {s['model']}, "
                  f"{s['optimizer']} lr {s['lr']:g}, batch {s['batch_size']}, {s['epochs']} epochs")
        return 0
    if args.nproc != 1:
        from cifarlab import train as training

        if args.budget or args.trials != 1:
            raise UserError("--budget and --trials run one process; leave out --nproc")
        # Settle the run directory once, so that every worker names the same one.
        if args.resume == "":
            args.resume = str(args.out or training.latest_run())
        elif args.resume is None and args.out is None:
            args.out = training.new_run_dir(args.recipe)
        return distributed.launch(args.nproc, _worker_argv(args))
    rank = distributed.from_env().rank
    if rank == 0:
        return _train(args)
    try:  # the other ranks stay silent: rank 0 reports the same failure once
        return _train(args)
    except UserError:
        return EXIT_USER_ERROR
    except TrainingError:
        return 1
    except (Interrupted, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    except RuntimeError as exc:  # mostly "connection closed by peer": rank 0 failed and said why
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"cifarlab: process {rank} stopped: {first[:200]}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    from cifarlab import distributed
    from cifarlab import train as training
    from cifarlab.budget import parse_duration
    from cifarlab.recipes import make_config

    main_rank = distributed.from_env().is_main
    if args.resume is not None:
        run_dir = Path(args.resume) if args.resume else args.out or training.latest_run()
        summary = training.resume(run_dir, quiet=args.quiet,
                                  device=None if args.device == "auto" else args.device,
                                  checkpoint_every=args.checkpoint_every)
        if not args.quiet and main_rank:
            _print_done(summary)
        return 0
    budget = parse_duration(args.budget) if args.budget else None
    if args.trials < 1:
        raise UserError("--trials must be at least 1")
    if args.trials > 1 and distributed.from_env().enabled:
        raise UserError("--trials runs one process; leave out --nproc/torchrun")
    parent = args.out or (training.new_run_dir(args.recipe) if args.trials > 1 else None)
    summaries = []
    for trial in range(args.trials):
        seed = args.seed + trial
        config = make_config(  # with a budget, --epochs is the most it may choose
            args.recipe, data=args.data, epochs=None if budget else args.epochs,
            max_epochs=args.epochs if budget else None, batch_size=args.batch_size,
            lr=args.lr, val_fraction=args.val_fraction, seed=seed, subset=args.subset,
            device=args.device, budget=budget)
        out = parent / f"seed-{seed}" if args.trials > 1 and parent else parent
        if args.trials > 1 and not args.quiet:
            print(f"trial {trial + 1}/{args.trials}: seed {seed}, {out}", flush=True)
        summaries.append(training.train(config, out=out, quiet=args.quiet,
                                        checkpoint_every=args.checkpoint_every or 0,
                                        started=args.started if trial == 0 else None))
        if not args.quiet and main_rank:
            _print_done(summaries[-1])
    if args.trials > 1 and parent:
        from cifarlab import fsio
        from cifarlab.compare import mean_std_table

        table = mean_std_table(summaries)
        fsio.write_json(parent / "trials.json", {"summaries": summaries, "mean_std": table})
        for key, (mean, std) in table.items():
            print(f"{key}: {mean:.4f} +- {std:.4f} over {len(summaries)} seeds")
    return 0


def _print_done(summary: dict[str, Any]) -> None:
    tta = f", with TTA {summary['val_acc_tta']:.4f}" if "val_acc_tta" in summary else ""
    print(f"done: val_acc {summary['val_acc']:.4f}{tta} (best {summary['best_val_acc']:.4f} at "
          f"epoch {summary['best_epoch']}), train_acc {summary['train_acc']:.4f} "
          f"(clean {summary['train_acc_clean']:.4f}), {summary['seconds_per_epoch']:.1f} s/epoch, "
          f"{summary['wall_seconds']:.0f} s in all")


def _load_for_use(model_arg: str, device_name: str) -> tuple[Any, dict[str, Any], Any]:
    from cifarlab.checkpoint import load_model
    from cifarlab.train import pick_device

    device = pick_device(device_name)
    model, record = load_model(model_arg)
    return model.to(device), record, device


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cifarlab.data import load_dataset, make_splits
    from cifarlab.evaluate import evaluate_split

    model, record, device = _load_for_use(args.model, args.device)
    config = record.get("config", {})
    source = args.data or config.get("data")
    dataset = load_dataset(source, quiet=args.quiet or args.json)
    if dataset.classes != record["classes"]:
        raise UserError(f"the data's classes {dataset.classes} differ from the model's "
                        f"{record['classes']}")
    splits = make_splits(dataset, float(config.get("val_fraction", 0.1)),
                         int(config.get("split_seed", 0)))
    split = args.split or ("test" if "test" in splits else "val")
    if split not in splits:
        raise UserError(f"{dataset.source} has no '{split}' split (available: {', '.join(splits)})")
    result = {"split": split, "tta": args.tta,
              **evaluate_split(model, splits[split], device, record["classes"], tta=args.tta)}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{split}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
          f"({result['n']} images{', test-time augmentation' if args.tta else ''})")
    width = max(len(c) for c in record["classes"])
    for name, acc in result["per_class"].items():
        print(f"  {name:<{width}}  {'-' if acc is None else f'{acc:.4f}'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cifarlab.evaluate import image_files, predict_files

    files = image_files(args.images)
    model, record, device = _load_for_use(args.model, args.device)
    results = predict_files(model, record["classes"], files, args.top_k, device)
    if args.json:
        print(json.dumps(results))
        return 0
    for result in results:
        tops = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in result["top"])
        print(f"{result['image']}: {tops}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from cifarlab.data import describe, load_dataset, make_splits

    dataset = load_dataset(args.data, quiet=args.quiet)
    print(describe(dataset, make_splits(dataset, args.val_fraction)))
    return 0


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()  # a --budget counts from here
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = started
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"cifarlab: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingError as exc:
        print(f"cifarlab: training failed: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"cifarlab: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("cifarlab: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `cifarlab predict ... | head`
        return 0
