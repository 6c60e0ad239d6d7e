"""``bnnkit export RUN_DIR_OR_CHECKPOINT --out FILE [--format ...]`` and
``bnnkit predict FILE [--data ROOT]``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export",
        help="write a trained model for deployment: packed file, Larq Compute Engine, OpenVINO",
        description="Convert a checkpoint (or a run directory's best.pt) to packed sign bits "
        "with folded scales and batch norms, check every packed layer against the trained one, "
        "and write it as a bnnkit packed file (.bnn; fast CPU kernels need numba: pip install "
        '"bnnkit[deploy]"), a Larq Compute Engine TFLite model (.tflite, for ARM devices) or an '
        "OpenVINO model (.xml + .bin, for x86); the runtimes need pip install "
        '"bnnkit[runtimes]". Prints the size report.',
    )
    e.add_argument("source", help="a run directory or a checkpoint file")
    e.add_argument(
        "--out", required=True, help="file to write: model.bnn, model.tflite or model.xml"
    )
    e.add_argument("--format", default=None, choices=("bnn", "lce", "openvino"),
                   help="deployment format (default: from the --out suffix)")  # fmt: skip
    e.add_argument("--batch", type=int, default=1, help="the runtime model's batch (default 1)")
    e.add_argument(
        "--kernel", default="auto", help="packed kernel of the check: auto, numba, reference"
    )
    e.set_defaults(run=run_export)

    p = sub.add_parser(
        "predict",
        help="accuracy and speed of a deployed model on its data set",
        description="Run a .bnn file (bnnkit's kernels; nothing in it is executed), a .tflite "
        "(Larq Compute Engine's interpreter) or an .xml (OpenVINO) and report top-1 / top-5 on "
        "the validation split of the data it was trained on; data.* overrides change it.",
    )
    p.add_argument("file", help="a .bnn, .tflite or .xml file written by `bnnkit export`")
    p.add_argument("--data", default=None, metavar="ROOT", help="data root (data.root=ROOT)")
    p.add_argument("--kernel", default="auto", help="auto, numba or reference (.bnn files)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads (.tflite, .xml)")
    p.add_argument("overrides", nargs="*", metavar="data.key=value", help="data overrides")
    p.set_defaults(run=run_predict)


def run_export(args: argparse.Namespace) -> int:
    from bnnkit.runs.evaluate import export_checkpoint, format_size_report

    file, report = export_checkpoint(args.source, args.out, kernel=args.kernel, format=args.format,
                                     batch=args.batch)  # fmt: skip
    print(format_size_report(report, file))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from bnnkit.runs.evaluate import evaluate_packed

    overrides = list(args.overrides) + ([f"data.root={args.data}"] if args.data else [])
    m = evaluate_packed(args.file, overrides, kernel=args.kernel, threads=args.threads)
    print(f"{args.file}: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}  "
          f"({m['samples']} images, {m['images_per_s']:.0f} images/s)")  # fmt: skip
    return 0
