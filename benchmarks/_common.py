"""Shared by the benchmark scripts: machine facts and the JSON-lines record of results."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


def git_rev() -> str:
    """Short git revision of the checkout (``unknown`` outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def append_record(file: str, benchmark: str, rows: list[dict[str, Any]], **extra: Any) -> Path:
    """Append one record (time, git revision, torch, threads, machine, ``extra``, rows) to
    ``benchmarks/results/<file>`` and return its path."""
    record = {
        "benchmark": benchmark,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_rev(),
        "torch": str(torch.__version__),
        **extra,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "rows": rows,
    }
    path = RESULTS_DIR / file
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended to {path.relative_to(REPO)}")
    return path
