"""``bnnkit export RUN_DIR_OR_CHECKPOINT --out FILE`` and ``bnnkit predict FILE [--data ROOT]``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export",
        help="write a trained model as a bit-packed file (1/32 of the float binary weights)",
        description="Convert a checkpoint (or a run directory's best.pt) to packed sign bits "
        "with folded scales and batch norms, check every packed layer against the trained one, "
        "write one safetensors file and print the size report. Fast CPU kernels need numba: "
        'pip install "bnnkit[deploy]".',
    )
    e.add_argument("source", help="a run directory or a checkpoint file")
    e.add_argument("--out", required=True, help="packed file to write (e.g. model.bnn)")
    e.add_argument("--kernel", default="auto", help="auto, numba or reference")
    e.set_defaults(run=run_export)

    p = sub.add_parser(
        "predict",
        help="accuracy and speed of a packed model on its data set",
        description="Load a packed file (nothing in it is executed) and report top-1 / top-5 on "
        "the validation split of the data it was trained on; data.* overrides change it.",
    )
    p.add_argument("file", help="a packed file written by `bnnkit export`")
    p.add_argument("--data", default=None, metavar="ROOT", help="data root (data.root=ROOT)")
    p.add_argument("--kernel", default="auto", help="auto, numba or reference")
    p.add_argument("overrides", nargs="*", metavar="data.key=value", help="data overrides")
    p.set_defaults(run=run_predict)


def run_export(args: argparse.Namespace) -> int:
    from bnnkit.runs.evaluate import export_checkpoint, format_size_report

    file, report = export_checkpoint(args.source, args.out, kernel=args.kernel)
    print(format_size_report(report, file))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from bnnkit.runs.evaluate import evaluate_packed

    overrides = list(args.overrides) + ([f"data.root={args.data}"] if args.data else [])
    m = evaluate_packed(args.file, overrides, kernel=args.kernel)
    print(f"{args.file}: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}  "
          f"({m['samples']} images, {m['images_per_s']:.0f} images/s)")  # fmt: skip
    return 0
