"""``bnnkit.train``: a whole run (run directory, stages, resume, distillation, DDP).

The run directory (:mod:`bnnkit.runs.rundir`) is ``./runs/<recipe>-<YYYYmmdd-HHMMSS>/`` unless
``out`` is given; each stage is :class:`~bnnkit.runs.stages.StageRun`; ``summary.json`` is written
when the last stage ends.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as td
from torch import nn

from bnnkit._version import __version__
from bnnkit.config import RunConfig, load_recipe, parse_override
from bnnkit.data import build_data
from bnnkit.errors import BnnkitError, PeerFailedError
from bnnkit.runs.checkpoint import Checkpoint, load_checkpoint
from bnnkit.runs.preempt import StopSignals
from bnnkit.runs.rundir import RunDirectory
from bnnkit.runs.session import Session, load_resumed, newest_checkpoint, open_session
from bnnkit.runs.stages import RunContext, run_stages, stage_result
from bnnkit.training import Dist, EpochResult, RunLogger, StageProgress, process_group


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
    """Rank 0 builds (and, with ``download: true``, fetches) the data first; the others follow,
    or stop quietly where rank 0 failed (it says why)."""

    def build() -> Any:
        seed = cfg.stages[0].training.seed
        return build_data(cfg.data, device=dist.device, rank=dist.rank,
                          world_size=dist.world_size, seed=seed)  # fmt: skip

    if not dist.enabled:
        return build()
    data, failure = None, None
    if dist.is_main:
        try:
            data = build()
        except BnnkitError as err:
            failure = err
    if dist.any_rank(failure is not None):
        if failure is not None:
            raise failure
        raise PeerFailedError("rank 0 could not build the data (its message says why)")
    return data if data is not None else build()


class RunInterrupted(BnnkitError, RuntimeError):
    """Ctrl-C (KeyboardInterrupt) stopped the run; the message says what was saved."""

    exit_status = 130
    label = "stopped"
    everywhere = True  # Ctrl-C reaches every process of a torchrun job


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
        out: run directory (default ``./runs/<recipe>-<date-time>``). With ``resume``: a new
            run directory to continue the checkpoint in.
        resume: a run directory (its newest complete checkpoint) or a checkpoint file to
            continue; its recipe is used, with ``overrides`` applied on top (e.g. more epochs).
            A run that already finished is reported, not retrained.
        teacher: a frozen KD teacher module (overrides ``kd.teacher``).
        callbacks: called with an :class:`~bnnkit.training.EpochResult` after every epoch
            (on every rank), after its checkpoint is written.
        **sections: recipe sections to merge, e.g. ``training={"epochs": 3}``.

    Raises:
        RunPreempted: a SIGTERM / SIGUSR1 stopped the run after a checkpoint (exit 75).
        RunInterrupted: Ctrl-C; the message names the newest checkpoint, if any.
    """
    flat = _flatten(overrides, sections)
    cfg = None if resume is not None else load_recipe(recipe, flat)
    device = cfg.stages[0].training.device if cfg is not None else _device_of(resume, flat)
    with process_group(device) as dist:
        name = cfg.name if cfg is not None else "resumed"
        session = open_session(dist, cfg, out=out, resume=resume, name=name)
        try:
            return _train_session(dist, session, cfg, flat, teacher, callbacks)
        except RuntimeError as err:
            if dist.enabled and _peer_lost(err):  # another rank died; it says why
                raise PeerFailedError(f"rank {dist.rank}: lost a peer ({err})") from None
            raise
        finally:
            session.close()


def _peer_lost(err: RuntimeError) -> bool:
    """Whether ``err`` is the collective of a job whose other process has gone."""
    text = str(err)
    return isinstance(err, td.DistError) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    )


def _device_of(resume: str | Path, flat: dict[str, Any]) -> str:
    """The training device a resumed run asks for (its recipe with the overrides)."""
    source: Path | None = Path(resume)
    if source.is_dir():
        source, _ = newest_checkpoint(RunDirectory(source))
    if source is None or not source.is_file():  # the session says what is missing
        return flat.get("training.device", "auto")
    try:
        ckpt = load_checkpoint(source, mmap=True)
    except BnnkitError:
        return flat.get("training.device", "auto")
    return load_recipe(ckpt.recipe, flat).stages[0].training.device


def _train_session(dist: Dist, session: Session, cfg: RunConfig | None, flat: dict[str, Any],
                   teacher: nn.Module | None,
                   callbacks: Sequence[Callable[[EpochResult], None]]) -> RunResult:  # fmt: skip
    resumed = load_resumed(session, flat)
    ckpt = None
    if resumed is not None:
        ckpt, cfg = resumed
    assert cfg is not None
    run = session.run
    first = cfg.stages[0].training
    seed_everything(first.seed, first.deterministic)  # same init on every rank
    if ckpt is not None and _finished(cfg, ckpt):
        return _already_finished(dist, run, cfg, ckpt)
    if dist.is_main:
        run.write_config(cfg.to_dict())
        dropped = run.rewind_events(ckpt.progress["step"]) if ckpt is not None else 0
        if dropped:
            session.notes.append(f"dropped {dropped} event(s) logged after the checkpoint's step "
                                 f"{ckpt.progress['step']} from {run.metrics.name}")  # fmt: skip
    logger = RunLogger(
        run.event_log() if dist.is_main else None,
        tensorboard_dir=run.tensorboard if cfg.logging.tensorboard else None,
        progress=cfg.logging.progress,
        enabled=dist.is_main,
    )  # fmt: skip
    for note in session.notes:
        logger.message(f"bnnkit: {note}")
    data = None
    try:
        with StopSignals() as stop:
            data = build_run_data(cfg, dist)
            ctx = RunContext(cfg, run, dist, logger, data, teacher, callbacks,
                             start=time.time() - (ckpt.seconds if ckpt else 0.0),
                             results=list(ckpt.stage_results) if ckpt else [], stop=stop)  # fmt: skip
            n_train = data.train.num_samples * dist.world_size
            n_val = data.val.num_samples * dist.world_size
            dropped = (
                data.train.dataset_size - n_train if hasattr(data.train, "dataset_size") else 0
            )
            note = f", {dropped} dropped: the last partial batch" if dropped > 0 else ""
            logger.message(f"bnnkit {__version__}: run {run.path} | data {data.name} ({n_train} train"
                           f"{note} / {n_val} val) | {dist.world_size} process(es) on {dist.device}")  # fmt: skip
            if ckpt is not None:
                logger.message(f"bnnkit: continuing from {session.checkpoint} (stage "
                               f"{ckpt.stage_name!r}, step {ckpt.progress['step']})")  # fmt: skip
            try:
                run_stages(ctx, ckpt)
            except KeyboardInterrupt:
                raise RunInterrupted(_interrupted_message(run)) from None
            return _finish(ctx)
    finally:
        if data is not None:
            data.close()
        logger.close()


def _finished(cfg: RunConfig, ckpt: Checkpoint) -> bool:
    """Whether ``ckpt`` is the end of the run ``cfg`` describes (its last stage's last epoch)."""
    last = len(cfg.stages) - 1
    return ckpt.stage_index == last and ckpt.progress["epoch"] >= cfg.stages[last].training.epochs


def _already_finished(dist: Dist, run: RunDirectory, cfg: RunConfig, ckpt: Checkpoint) -> RunResult:
    """A resumed run that has nothing left to train: its results, its files untouched (the
    summary is written only where the run was stopped before writing it)."""
    summary = run.read_summary()
    if not summary.get("stages"):
        results = list(ckpt.stage_results)
        if len(results) < len(cfg.stages):
            results.append(stage_result(cfg.stages[-1], StageProgress(**ckpt.progress)))
        ctx = RunContext(cfg, run, dist, RunLogger(enabled=False), None, results=results,
                         start=time.time() - ckpt.seconds)  # fmt: skip
        result = _finish(ctx)
    else:
        fields = {k: summary[k] for k in RunResult.__dataclass_fields__ if k in summary}
        result = RunResult(run_dir=run.path if dist.is_main else None, **fields)
    if dist.is_main:
        epochs = cfg.stages[-1].training.epochs
        print(f"bnnkit: {run.path} already finished ({epochs} epoch(s) of its last stage, "
              f"stage {cfg.stages[-1].name!r}); nothing to train. To train longer, resume with "
              f"a larger training.epochs", file=sys.stderr)  # fmt: skip
    return result


def _interrupted_message(run: RunDirectory) -> str:
    path, _ = newest_checkpoint(run)
    if path is None:
        return (f"interrupted before the first checkpoint: nothing was saved. Start again with "
                f"--out {run.path} (the folder is reused)")  # fmt: skip
    ckpt = load_checkpoint(path, mmap=True)
    p = ckpt.progress
    return (f"interrupted; the newest checkpoint is {path} (stage {ckpt.stage_name!r}, "
            f"{p['epoch']} epoch(s) done, step {p['step']}). Continue with "
            f"`bnnkit train --resume {run.path}`")  # fmt: skip


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
