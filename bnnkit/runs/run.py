"""``bnnkit.train``: a whole run (run directory, stages, resume, distillation, DDP).

The run directory (:mod:`bnnkit.runs.rundir`) is ``./runs/<recipe>-<YYYYmmdd-HHMMSS>/`` unless
``out`` is given; each stage is :class:`~bnnkit.runs.stages.StageRun`; ``summary.json`` is written
when the last stage ends.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bnnkit._version import __version__
from bnnkit.config import RunConfig, load_recipe, parse_override
from bnnkit.data import build_data
from bnnkit.runs.checkpoint import load_checkpoint
from bnnkit.runs.rundir import RunDirectory
from bnnkit.runs.stages import RunContext, run_stages
from bnnkit.training import Dist, EpochResult, RunLogger, process_group


@dataclass
class RunResult:
    """What a run produced; accuracies of the final stage, in %."""

    run_dir: Path | None
    best_top1: float
    best_top5: float
    best_epoch: int
    final_top1: float
    final_top5: float
    seconds: float
    stages: list[dict[str, Any]] = field(default_factory=list)
    dynamics: dict[str, float] = field(default_factory=dict)  # final "dyn/<metric>/all" values


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch (and make torch deterministic when asked)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _flatten(
    overrides: Sequence[str] | dict[str, Any] | None, sections: dict[str, Any]
) -> dict[str, Any]:
    """Dotted overrides from strings, a dict, and section keyword arguments, in that order."""
    if isinstance(overrides, dict):
        flat = dict(overrides)
    else:
        flat = {".".join(parts): value for parts, value in map(parse_override, overrides or [])}
    for key, value in sections.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def build_run_data(cfg: RunConfig, dist: Dist) -> Any:
    """Rank 0 builds (and, with ``download: true``, fetches) the data first; the others follow."""

    def build() -> Any:
        seed = cfg.stages[0].training.seed
        return build_data(cfg.data, device=dist.device, rank=dist.rank,
                          world_size=dist.world_size, seed=seed)  # fmt: skip

    if not dist.enabled:
        return build()
    data = build() if dist.is_main else None
    dist.barrier()
    return data if data is not None else build()


def train(
    recipe: str | Path | dict[str, Any] = "quickstart",
    overrides: Sequence[str] | dict[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    teacher: nn.Module | None = None,
    callbacks: Sequence[Callable[[EpochResult], None]] = (),
    **sections: Any,
) -> RunResult:
    """Train a recipe; returns the final stage's best and final accuracy.

    Args:
        recipe: a recipe path, a shipped recipe name (``bnnkit list recipes``) or a dict.
        overrides: dotted ``key=value`` strings or a ``{"training.epochs": 3}`` dict.
        out: run directory (default ``./runs/<recipe>-<date-time>``).
        resume: a run directory (or checkpoint) to continue; its recipe is used, with
            ``overrides`` applied on top (e.g. more epochs).
        teacher: a frozen KD teacher module (overrides ``kd.teacher``).
        callbacks: called with an :class:`~bnnkit.training.EpochResult` after every epoch
            (on every rank), after its checkpoint is written.
        **sections: recipe sections to merge, e.g. ``training={"epochs": 3}``.
    """
    flat = _flatten(overrides, sections)
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        cfg = load_recipe(ckpt.recipe, flat)
        run = RunDirectory.of_checkpoint(resume)
    else:
        cfg = load_recipe(recipe, flat)
    first = cfg.stages[0].training
    with process_group(first.device) as dist:
        seed_everything(first.seed, first.deterministic)  # same init on every rank
        if resume is None:
            run = (
                RunDirectory.create(out, cfg.name)
                if dist.is_main
                else RunDirectory(Path(out or "."))
            )
        if dist.is_main:
            run.write_config(cfg.to_dict())
        logger = RunLogger(
            run.event_log() if dist.is_main else None,
            tensorboard_dir=run.tensorboard if cfg.logging.tensorboard else None,
            progress=cfg.logging.progress,
            enabled=dist.is_main,
        )  # fmt: skip
        data = None
        try:
            data = build_run_data(cfg, dist)
            ctx = RunContext(cfg, run, dist, logger, data, teacher, callbacks,
                             start=time.time() - (ckpt.seconds if ckpt else 0.0),
                             results=list(ckpt.stage_results) if ckpt else [])  # fmt: skip
            n_train = data.train.num_samples * dist.world_size
            n_val = data.val.num_samples * dist.world_size
            logger.message(f"bnnkit {__version__}: run {run.path} | data {data.name} ({n_train} train / "
                           f"{n_val} val) | {dist.world_size} process(es) on {dist.device}")  # fmt: skip
            run_stages(ctx, ckpt)
            return _finish(ctx)
        finally:
            if data is not None:
                data.close()
            logger.close()


def _finish(ctx: RunContext) -> RunResult:
    last = ctx.results[-1] if ctx.results else {}
    nan = float("nan")
    result = RunResult(
        run_dir=ctx.run.path if ctx.dist.is_main else None,
        best_top1=last.get("best_top1", nan), best_top5=last.get("best_top5", nan),
        best_epoch=last.get("best_epoch", 0), final_top1=last.get("final_top1") or nan,
        final_top5=last.get("final_top5") or nan, seconds=time.time() - ctx.start,
        stages=ctx.results, dynamics=last.get("dynamics") or {},
    )  # fmt: skip
    if ctx.dist.is_main:
        ctx.run.write_summary({k: v for k, v in asdict(result).items() if k != "run_dir"})
    return result


def format_result(result: RunResult) -> str:
    """The table ``bnnkit train`` prints at the end."""
    header = ("stage", "method", "epochs", "best top-1", "best top-5", "best epoch",
              "final top-1", "final top-5")  # fmt: skip
    rows = [header]
    for s in result.stages:
        rows.append((s["stage"], s["method"], str(s["epochs"]), f"{s['best_top1']:.2f}",
                     f"{s['best_top5']:.2f}", str(s["best_epoch"]), f"{s['final_top1']:.2f}",
                     f"{s['final_top5']:.2f}"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"run directory: {result.run_dir}   time: {result.seconds:.1f}s")
    return "\n".join(lines)
