"""What the report and the comparison read of a run: :class:`RunData`, parsed by
:meth:`bnnkit.runs.RunDirectory.load` (the run directory's layout is not known here)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnkit.diagnostics import names as N
from bnnkit.errors import BnnkitError


class ReportError(BnnkitError, ValueError):
    """A folder that is not a bnnkit run directory (or holds no training events yet)."""


def finite(v: Any) -> bool:
    """A real number that is not NaN or infinite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class RunData:
    """A run, parsed (epoch events de-duplicated across resumes).

    Attributes:
        path: the run directory.
        config: the resolved recipe (``config.yaml``).
        summary: ``summary.json`` (empty before the run finished).
        epochs: epoch events in order, each with ``index`` (the global epoch, 0-based).
        train: train events in order.
        histograms: latent-weight histogram records.
        stages: stage names in order.
        init_files: per stage, the file of the tracked layers' initial latent weights.
        flip_files: per stage, the file of the per-weight flip state.
    """

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    epochs: list[dict[str, Any]]
    train: list[dict[str, Any]]
    histograms: list[dict[str, Any]]
    stages: list[str] = field(default_factory=list)
    init_files: dict[str, Path] = field(default_factory=dict)
    flip_files: dict[str, Path] = field(default_factory=dict)

    def layers(self, stage: str | None = None) -> list[str]:
        """Tracked layer names, in forward order, from the epoch events."""
        prefix = N.dyn_key(N.OSCILLATION, "")
        for e in self.epochs:
            if stage is None or e[N.STAGE] == stage:
                names = [k[len(prefix) :] for k in e if k.startswith(prefix)]
                if names:
                    return [n for n in names if n != N.ALL]
        return []

    def series(self, key: str, stage: str | None = None) -> tuple[list[int], list[float]]:
        """``(global epoch numbers (1-based), values)`` of an epoch-event key."""
        xs, ys = [], []
        for e in self.epochs:
            if key in e and (stage is None or e[N.STAGE] == stage) and finite(e[key]):
                xs.append(e["index"] + 1)
                ys.append(float(e[key]))
        return xs, ys

    def method_series(self, key: str) -> tuple[list[int], list[float]]:
        """Per-epoch mean of a train-event key (e.g. ``method/recu/tau``)."""
        sums: dict[tuple[str, int], list[float]] = defaultdict(list)
        for t in self.train:
            if key in t and finite(t[key]):
                sums[(t[N.STAGE], t[N.EPOCH])].append(float(t[key]))
        xs, ys = [], []
        for e in self.epochs:
            vals = sums.get((e[N.STAGE], e[N.EPOCH]))
            if vals:
                xs.append(e["index"] + 1)
                ys.append(sum(vals) / len(vals))
        return xs, ys
