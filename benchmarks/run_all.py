"""Run the whole benchmark suite with one command (each script appends its JSON record).

Usage::

    python benchmarks/run_all.py            # CPU suite: data, data_imagenet, train_step, compile
    python benchmarks/run_all.py --quick    # fewer rounds (a smoke run; figures are noisier)

``gpu.py`` is added when CUDA is available. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    q = args.quick
    suite = [
        ["data.py"] + (["--runs", "3"] if q else []),
        ["data_imagenet.py"] + (["--epochs", "1", "--images", "64"] if q else []),
        ["train_step.py"] + (["--rounds", "2", "--steps", "1", "--warmup", "1"] if q else []),
        ["compile.py"] + (["--methods", "ste", "--rounds", "1", "--steps", "1"] if q else []),
    ]
    if torch.cuda.is_available():
        suite.append(["gpu.py"] + (["--rounds", "1", "--steps", "2"] if q else []))
    failed = []
    for cmd in suite:
        print(f"\n=== python benchmarks/{' '.join(cmd)}", flush=True)
        if subprocess.run(
            [sys.executable, str(HERE / cmd[0]), *cmd[1:]], cwd=HERE.parent
        ).returncode:
            failed.append(cmd[0])
    print(f"\nfailed: {failed}" if failed else "\nall benchmarks ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
