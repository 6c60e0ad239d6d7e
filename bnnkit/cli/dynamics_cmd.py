"""``bnnkit report RUN_DIR`` and ``bnnkit compare RECIPE --methods ... [--seeds ...]``."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "report",
        help="training-dynamics report of a run: report.md and the papers' figures",
        description="Write report.md and figures/*.png (flip rates, oscillation, silent and "
        "dead weights, latent-weight distributions) for a run directory. Figures need "
        'matplotlib: pip install "bnnkit[plot]".',
    )
    r.add_argument("run_dir", help="a run directory written by `bnnkit train`")
    r.add_argument("--out", default=None, help="output folder (default: the run directory)")
    r.set_defaults(run=run_report)

    c = sub.add_parser(
        "compare",
        help="train several methods on the same budget and compare accuracy and dynamics",
        description="Train every method x seed with the same recipe, data and budget (one after "
        "the other; run the same command again to resume), then write compare.md, "
        "compare.json and compare.png and print the table. key=value overrides apply to every "
        "run; <method>.<field>=value only to that method (e.g. ovsw.delta=0.04).",
    )
    c.add_argument("recipe", help="recipe file or name (`bnnkit list recipes`)")
    c.add_argument(
        "--methods",
        required=True,
        help="comma-separated methods, e.g. ste,reactnet,recu,rebnn,ovsw",
    )
    c.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    c.add_argument("--out", default=None, help="folder (default: ./runs/compare-<recipe>-<time>)")
    c.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    c.set_defaults(run=run_compare)


def run_report(args: argparse.Namespace) -> int:
    from bnnkit.diagnostics.figures import pyplot
    from bnnkit.diagnostics.report import write_report
    from bnnkit.runs import load_run

    report, figures = write_report(load_run(args.run_dir), args.out)
    print(f"report: {report}")
    for f in figures:
        print(f"figure: {f}")
    if pyplot() is None:
        print('bnnkit: figures skipped: matplotlib is not installed (pip install "bnnkit[plot]")',
              file=sys.stderr)  # fmt: skip
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from bnnkit.runs.compare import compare, parse_list
    from bnnkit.runs.run import RunInterrupted

    try:
        result = compare(
            args.recipe,
            parse_list(args.methods),
            parse_list(args.seeds, int),
            args.overrides,
            out=args.out,
        )
    except (KeyboardInterrupt, RunInterrupted):
        print("\nbnnkit: stopped: interrupted; run the same command (with --out) to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    print(result.table())
    print(f"comparison: {result.out / 'compare.md'}")
    return 0
