"""Shared by the benchmark scripts: machine facts, the JSON-lines record of results, timing in
alternation and a trained-like model."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import bnnkit

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


def _time(fn: Callable[[], object], reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def alternate(fns: dict[str, Callable[[], object]], rounds: int, reps: int,
              warmups: int = 1) -> dict[str, float]:  # fmt: skip
    """Median seconds per call of each function, measured in alternation (``rounds`` rounds of
    ``reps`` calls each) after ``warmups`` calls of each (numba compiles on first use; a
    runtime allocates on its first calls)."""
    for fn in fns.values():
        for _ in range(warmups):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(_time(fn, reps))
    return {k: statistics.median(v) for k, v in times.items()}


def trained_like(name: str, method: str) -> torch.nn.Module:
    """Model ``name`` with ``method`` attached, seeded, BN variances drawn from U[0.5, 2)
    (as a trained one's), in eval mode."""
    torch.manual_seed(0)
    model = bnnkit.binarize_(bnnkit.create_model(name), bnnkit.get_method(method))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()
