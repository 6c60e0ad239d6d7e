"""``bnnkit summary MODEL``: parameters, memory and OPs of a registered model."""

from __future__ import annotations

import argparse
import json


def _size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"input size must look like 3,32,32, got {text!r}"
        ) from None
    if not size or min(size) < 1:
        raise argparse.ArgumentTypeError(f"input size must be positive, got {text!r}")
    return size


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary",
        help="parameters, memory (trained vs deployed) and MACs/BOPs/OPs of a model",
        description="Print a per-layer summary of a registered model with a method attached.",
    )
    p.add_argument("model", help="model name (see `bnnkit list models`)")
    p.add_argument("--method", default="ste", help="binarization method (default: ste, W1A1)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: the model's)")
    p.add_argument(
        "--input-size",
        type=_size,
        default=None,
        help="one sample's shape, e.g. 3,224,224 (default: the model's)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bnnkit.diagnostics import summary
    from bnnkit.methods import binarize_, get_method
    from bnnkit.models import create_model, model_info

    info = model_info(args.model)
    model = create_model(args.model, num_classes=args.num_classes)
    binarize_(model, get_method(args.method))
    result = summary(model, args.input_size or info.input_size)
    result.title = f"{args.model} ({args.method})"
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0
