"""Run logging: events to a sink (the run directory's ``metrics.jsonl``), TensorBoard, tqdm.

The logger is given where events go (an :class:`EventSink`; the run directory's files belong
to :mod:`bnnkit.runs.rundir`, whose ``EventLog`` is the sink of a run).
Only rank 0 logs (other ranks get ``enabled=False``: everything dropped). Values are converted
to Python numbers here, at the log interval, which is the only place the loop syncs.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch


def _summary_writer(log_dir: Path) -> Any:
    """A TensorBoard writer, or None when tensorboard is not installed (an optional extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # missing or broken tensorboard: no event files
        return None
    return SummaryWriter(log_dir=str(log_dir))


def to_number(value: Any) -> Any:
    """A tensor or number as a JSON-friendly Python value (NaN/inf kept as strings)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class EventSink(Protocol):
    """Where log events go: one call per event record (a JSON-friendly dict)."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class RunLogger:
    """Writes events to a sink and TensorBoard, prints messages, drives a progress bar.

    Args:
        events: where event records go (``None``: nowhere).
        tensorboard_dir: TensorBoard event folder (``None``: none; also none when
            tensorboard is not installed).
        progress: ``auto`` (a bar on a terminal only), ``on`` or ``off``.
        enabled: ``False`` drops everything (the other ranks of a DDP job, benchmarks).
    """

    def __init__(
        self,
        events: EventSink | None = None,
        *,
        tensorboard_dir: Path | None = None,
        progress: str = "off",
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self._events = events if enabled else None
        self._tb = _summary_writer(tensorboard_dir) if enabled and tensorboard_dir else None
        self._progress_mode = progress
        self._bar = None
        self.start = time.time()

    def log(self, event: str, **values: Any) -> dict[str, Any]:
        record = {"event": event, "time": round(time.time() - self.start, 3)}
        record.update({k: to_number(v) for k, v in values.items()})
        if self._events is not None:
            self._events.write(record)
        if self._tb is not None and "step" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch", "time", "stage"):
                    self._tb.add_scalar(f"{event}/{k}", v, record["step"])
        return record

    def histograms(self, records: list[dict[str, Any]], step: int) -> None:
        """Histogram records (:meth:`bnnkit.diagnostics.Dynamics.histograms`) to TensorBoard."""
        if self._tb is None:
            return
        for r in records:
            counts = torch.tensor(r["counts"], dtype=torch.float64)
            lo, hi = r["range"]
            edges = torch.linspace(lo, hi, len(counts) + 1, dtype=torch.float64)
            centers = (edges[:-1] + edges[1:]) / 2
            n = float(counts.sum())
            self._tb.add_histogram_raw(
                f"dyn/hist/{r['layer']}" + ("/channel0" if r["kind"] == "channel0" else ""),
                min=lo, max=hi, num=n, sum=float((centers * counts).sum()),
                sum_squares=float((centers.square() * counts).sum()),
                bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(), global_step=step,
            )  # fmt: skip

    # -- progress bar ----------------------------------------------------------------------------
    def bar_start(self, total: int, desc: str) -> None:
        if not self.enabled or self._progress_mode == "off":
            return
        disable = None if self._progress_mode == "auto" else False
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total,
            desc=desc,
            leave=False,
            disable=disable,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def bar_update(self, n: int, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: to_number(v) for k, v in postfix.items()}, refresh=False)

    def bar_close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def message(self, text: str) -> None:
        """A line for the user (stderr, above the progress bar)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        self.bar_close()
        if self._events is not None:
            self._events.close()
        if self._tb is not None:
            self._tb.close()
