"""``bnnkit`` command line: thin argparse wrappers over library functions.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``. A
user error (:class:`bnnkit.errors.BnnkitError`: a bad recipe key, a missing data folder, a
checkpoint that does not fit...) is printed as one line and exits with its ``exit_status``
(2; 1 for a training that diverged or a failed checkpoint write; 75 for a run stopped by
SIGTERM / SIGUSR1 after a checkpoint; 130 for Ctrl-C); anything else is a bug and keeps its
traceback. Under torchrun an error every rank raises alike is printed by rank 0 only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from bnnkit._version import __version__
from bnnkit.cli import dynamics_cmd, export_cmd, listing, summary_cmd, train_cmd
from bnnkit.errors import BnnkitError

COMMANDS = (train_cmd, dynamics_cmd, export_cmd, listing, summary_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnnkit",
        description="Train, diagnose and ship binary neural networks (1-bit weights and "
        "activations) with PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"bnnkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # overrides (key=value) may follow options: `compare R --methods a,b training.epochs=3`
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # output piped into `head` etc.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # Ctrl-C outside a run's loop (start-up, a listing, an export)
        print("\nbnnkit: stopped: interrupted", file=sys.stderr)
        return 130
    except BnnkitError as err:
        if not err.quiet and not (err.everywhere and int(os.environ.get("RANK", "0")) > 0):
            print(f"bnnkit: {err.label}: {err}", file=sys.stderr)
        return err.exit_status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
