"""``bnnkit train [RECIPE] [key=value ...]`` and ``bnnkit eval CHECKPOINT``."""

from __future__ import annotations

import argparse
from pathlib import Path

from bnnkit.cli.errors import CLIError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a recipe (no recipe: the quickstart)",
        description="Train a recipe. Overrides are dotted key=value pairs, e.g. "
        "training.epochs=3 data.root=/data/cifar method.name=ste. Launch with "
        "`torchrun --nproc_per_node N -m bnnkit train ...` for several processes; "
        "data.batch_size is the global batch.",
    )
    p.add_argument(
        "recipe",
        nargs="?",
        default=None,
        help="recipe file or name (`bnnkit list recipes`); default: quickstart",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    p.add_argument(
        "--out",
        default=None,
        help="run directory (default: ./runs/<recipe>-<date-time>); with --resume: a new run "
        "directory to continue the checkpoint in",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR|CHECKPOINT",
        help="continue a run from its newest complete checkpoint (or from the checkpoint file "
        "given); a finished run is reported, not retrained",
    )
    p.set_defaults(run=run_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint (top-1 / top-5 on its validation data)")
    e.add_argument(
        "checkpoint", help="a checkpoint file or a run directory (uses best.pt, else last.pt)"
    )
    e.add_argument("--data", default=None, metavar="ROOT", help="data root (overrides data.root)")
    e.add_argument(
        "overrides", nargs="*", metavar="key=value", help="data overrides, e.g. data.val_limit=1000"
    )
    e.set_defaults(run=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from bnnkit.runs import format_result, train

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe and not Path(recipe).exists():
        recipe, overrides = None, [recipe, *overrides]
    if args.resume and recipe:
        raise CLIError(
            "give either a recipe or --resume RUN_DIR (the run's own recipe is used), not both"
        )
    result = train(recipe or "quickstart", overrides, out=args.out, resume=args.resume)
    if result.run_dir is not None:
        print(format_result(result))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from bnnkit.runs import evaluate_checkpoint

    overrides = list(args.overrides) + ([f"data.root={args.data}"] if args.data else [])
    metrics, path = evaluate_checkpoint(args.checkpoint, overrides)
    print(f"{path}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
          f"loss {metrics['loss']:.4f}  ({metrics['samples']} images)")  # fmt: skip
    return 0
