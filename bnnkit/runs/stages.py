"""One stage of a run, end to end: build the model (from the previous stage's weights, or the
checkpoint being resumed), its optimizer, trackers and KD teacher, wrap it for DDP / compile,
then train it through :meth:`bnnkit.training.Trainer.epochs`, writing after each epoch the
dynamics dumps and the checkpoints, and inside epochs the step checkpoints
(``training.checkpoint_every_steps``) and the one a stop signal asks for
(:mod:`bnnkit.runs.preempt`).

Checkpoints are written by rank 0; every rank then learns whether the write worked, so a
failed write (disk full, no permission) stops the whole job with a message naming the file,
and the previous checkpoints are left intact (atomic writes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from bnnkit.config import RunConfig, StageConfig
from bnnkit.diagnostics import Dynamics
from bnnkit.diagnostics import names as N
from bnnkit.errors import BnnkitError, PeerFailedError
from bnnkit.methods import binarize_, get_method
from bnnkit.models import create_model
from bnnkit.nn import binary_layers
from bnnkit.runs.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_stage_init,
    rng_state,
    set_rng_state,
)
from bnnkit.runs.preempt import EXIT_PREEMPTED, RunPreempted, StopSignals
from bnnkit.runs.rundir import RunDirectory
from bnnkit.training import (
    Dist,
    EpochResult,
    RunLogger,
    StageProgress,
    TaskLoss,
    Trainer,
    build_model,
    build_optimizer,
)


def model_from_checkpoint(ckpt: Checkpoint, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint was written for and load its weights (eval mode)."""
    spec = ckpt.model_spec
    model = create_model(spec["name"], num_classes=spec["num_classes"], **spec["options"])
    binarize_(model, get_method(ckpt.method), pad_value=spec.get("pad_value") or None)
    ckpt.load_model(model, "checkpoint")
    return model.to(device).eval()


def load_teacher(spec: str | nn.Module | None, device: torch.device) -> nn.Module | None:
    """The KD teacher: a module, or the model of a checkpoint / run directory."""
    if spec is None or isinstance(spec, nn.Module):
        return spec.to(device) if spec is not None else None
    return model_from_checkpoint(load_checkpoint(spec), device)


class TeacherError(BnnkitError, ValueError):
    """The KD teacher does not fit the data or the student (checked before training)."""


@torch.no_grad()
def check_teacher(teacher: nn.Module, input_size: tuple[int, ...], classes: int,
                  device: torch.device) -> None:  # fmt: skip
    """Run the teacher once on a batch of two zero images of the data's shape: it must accept
    them and give ``(2, classes)`` logits (else a :class:`TeacherError` before training)."""
    was_training = teacher.training
    teacher.eval()
    try:
        out = teacher(torch.zeros(2, *input_size, device=device))
    except (RuntimeError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise TeacherError(
            f"kd.teacher does not take this data's inputs (shape {list(input_size)}): {first}. "
            "Use a teacher trained on the same data (the same input size and classes)"
        ) from None
    finally:
        teacher.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TeacherError(
            f"kd.teacher gives outputs of shape {shape} for 2 images; the student has {classes} "
            f"classes, so it needs [2, {classes}]. Use a teacher trained on the same classes"
        )


@dataclass
class RunContext:
    """What every stage of one run shares."""

    cfg: RunConfig
    run: RunDirectory
    dist: Dist
    logger: RunLogger
    data: Any  # a DataBundle
    teacher: nn.Module | None = None
    callbacks: Sequence[Callable[[EpochResult], None]] = ()
    start: float = field(default_factory=time.time)
    results: list[dict[str, Any]] = field(default_factory=list)
    stop: StopSignals | None = None

    def stop_agreed(self) -> str | None:
        """The stop signal's name when any rank received one (every rank agrees), else None."""
        local = self.stop is not None and self.stop.requested is not None
        if not self.dist.any_rank(local):
            return None
        return (self.stop.requested if local else None) or "a stop signal (on another rank)"


class CheckpointWriteError(BnnkitError, OSError):
    """A checkpoint could not be written; the run stops, the previous checkpoints are intact."""

    exit_status = 1


def _wrap(model: nn.Module, stage: StageConfig, dist: Dist) -> nn.Module:
    forward_model: nn.Module = model
    if dist.enabled:
        if stage.training.sync_bn and dist.device.type == "cuda":  # SyncBatchNorm is CUDA-only
            forward_model = nn.SyncBatchNorm.convert_sync_batchnorm(forward_model)
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        forward_model = nn.parallel.DistributedDataParallel(forward_model, device_ids=ids)
    if stage.training.compile:
        forward_model = torch.compile(forward_model)
    return forward_model


class StageRun:
    """One stage: :meth:`build` its model and loop, :meth:`train` it, :meth:`result`."""

    def __init__(self, ctx: RunContext, index: int) -> None:
        self.ctx, self.index = ctx, index
        self.stage = ctx.cfg.stages[index]
        self.last = index == len(ctx.cfg.stages) - 1

    # -- building -------------------------------------------------------------------------------
    def build(
        self, prev_state: dict[str, torch.Tensor] | None, resume: Checkpoint | None, step: int
    ) -> None:
        """The model from ``resume`` (this stage's checkpoint) or from the previous stage's
        weights (``prev_state``), the optimizer, scaler, trackers and the trainer."""
        ctx, stage, dist = self.ctx, self.stage, self.ctx.dist
        model = build_model(ctx.cfg, stage, ctx.data.num_classes).to(dist.device)
        if stage.training.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if resume is not None:
            resume.load_model(model, f"{ctx.run.path} (last.pt)")
        elif prev_state is not None:
            previous = ctx.cfg.stages[self.index - 1].name
            added = load_stage_init(model, prev_state, f"stage {previous!r}")  # resets signs
            if added:
                more = " ..." if len(added) > 8 else ""
                ctx.logger.message(f"[{stage.name}] new parameters initialised fresh: {', '.join(added[:8])}{more}")  # fmt: skip
        optimizer = build_optimizer(model, stage.method, stage.optimizer)
        use_scaler = stage.training.amp == "fp16" and dist.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        if stage.training.amp == "fp16" and dist.device.type != "cuda":
            ctx.logger.message(f"[{stage.name}] training.amp=fp16 ignored: fp16 autocast is "
                               "used on CUDA only (use bf16 on the CPU)")  # fmt: skip
        progress = StageProgress(step=step)
        if resume is not None:
            optimizer.load_state_dict(resume.optimizer)
            if scaler is not None and resume.scaler:
                scaler.load_state_dict(resume.scaler)
            progress = StageProgress(**resume.progress)
            set_rng_state(resume.rng)
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.dynamics = self._start_dynamics(model, step, resume)
        teacher = load_teacher(
            ctx.teacher if ctx.teacher is not None else stage.kd.teacher, dist.device
        )
        if teacher is not None:
            check_teacher(teacher, ctx.data.input_size, ctx.data.num_classes, dist.device)
        loss_fn = TaskLoss(
            stage.training.label_smoothing, teacher, stage.kd.alpha, stage.kd.temperature
        )
        self.trainer = Trainer(
            stage, model, optimizer, forward_model=_wrap(model, stage, dist), scaler=scaler,
            loss_fn=loss_fn, dist=dist, logger=ctx.logger, log_every=ctx.cfg.logging.log_every,
            progress=progress, dynamics=self.dynamics, dynamics_every=ctx.cfg.diagnostics.every,
            on_step=self._on_step,
        )  # fmt: skip

    def _start_dynamics(
        self, model: nn.Module, step: int, resume: Checkpoint | None
    ) -> Dynamics | None:
        """The stage's trackers (None when disabled or nothing is binarized); a resumed stage
        continues the saved counts, a new one counts from its starting weights."""
        ctx, stage = self.ctx, self.stage
        has_binary = any(m.binary_weight for _, m in binary_layers(model))
        if not ctx.cfg.diagnostics.enabled or not has_binary:
            return None
        dyn = Dynamics(model, max_steps=stage.training.epochs * len(ctx.data.train))
        dyn.reset(step)
        if resume is not None:
            if resume.dynamics:
                dyn.load_state_dict(resume.dynamics)
            else:
                ctx.logger.message(f"[{stage.name}] the checkpoint has no tracker state: dynamics count from now")  # fmt: skip
        elif ctx.dist.is_main:
            ctx.run.write_init(stage.name, dyn)
            ctx.run.append_histograms(stage.name, 0, step, dyn, ctx.cfg.diagnostics.hist_bins)
        return dyn

    # -- training -------------------------------------------------------------------------------
    def train(self) -> StageProgress:
        """The remaining epochs; after each: dynamics dumps, checkpoints, callbacks; a stop
        signal ends the stage after the checkpoint of the step (or epoch) it arrived in."""
        trainer = self.trainer
        try:
            for result in trainer.epochs(self.ctx.data.train, self.ctx.data.val):
                if self.ctx.dist.is_main:
                    self._write_dynamics(result.epoch)
                self._save(result.is_best)
                for callback in self.ctx.callbacks:
                    callback(result)
                signal = self.ctx.stop_agreed()
                if signal is not None:
                    self._stopped(signal, self.ctx.run.last_checkpoint)
        finally:
            # break the trainer -> StageRun cycle, so that the DDP wrapper (whose reducer holds
            # the process group) is freed when the stage ends, not by a late garbage collection
            # after the group is destroyed (gloo then aborts the process at exit)
            trainer.on_step = None
        return trainer.progress

    def _on_step(self, trainer: Trainer) -> None:
        """After each step inside an epoch: a step checkpoint when one is due or a stop signal
        arrived (then stop)."""
        every = self.stage.training.checkpoint_every_steps
        signal = self.ctx.stop_agreed()
        if signal is None and not (every and trainer.progress.step % every == 0):
            return
        trainer.snapshot()  # checks the loss is finite on every rank first
        run = self.ctx.run
        path = run.step_checkpoint(trainer.progress.step)
        self._write(path)
        if self.ctx.dist.is_main:
            run.prune_step_checkpoints(self.stage.training.keep_checkpoints)
        if signal is not None:
            self._stopped(signal, path)

    def _stopped(self, signal: str, path: Any) -> None:
        p, run = self.trainer.progress, self.ctx.run
        raise RunPreempted(
            f"stopped on {signal} after step {p.step} (stage {self.stage.name!r}, epoch "
            f"{p.epoch + (1 if p.batch else 0)}); checkpoint {path}. Continue exactly with "
            f"`bnnkit train --resume {run.path}` (exit status {EXIT_PREEMPTED}: requeue)"
        )

    def _write_dynamics(self, epoch: int) -> None:
        dyn, ctx, stage = self.dynamics, self.ctx, self.stage
        if dyn is None:
            return
        diag, step = ctx.cfg.diagnostics, self.trainer.progress.step
        ctx.run.write_flips(stage.name, epoch, step, dyn, keep=diag.keep_dumps, every=diag.every)
        done = epoch + 1
        if done == stage.training.epochs or (diag.hist_every and done % diag.hist_every == 0):
            records = ctx.run.append_histograms(stage.name, done, step, dyn, diag.hist_bins)
            ctx.logger.histograms(records, step)

    def checkpoint(self) -> Checkpoint:
        """The checkpoint of the stage as it stands."""
        ctx, stage = self.ctx, self.stage
        spec = {"name": ctx.cfg.model.name, "options": ctx.cfg.model.options,
                "num_classes": ctx.data.num_classes}  # fmt: skip
        if ctx.cfg.model.pad_value:
            spec["pad_value"] = ctx.cfg.model.pad_value
        return Checkpoint(
            recipe=ctx.cfg.raw, config=ctx.cfg.to_dict(), stage_index=self.index,
            stage_name=stage.name, model_spec=spec, method=stage.method.to_config(),
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            progress=asdict(self.trainer.progress), rng=rng_state(),
            stage_results=ctx.results, seconds=time.time() - ctx.start,
            dynamics=self.dynamics.state_dict() if self.dynamics is not None else None,
        )  # fmt: skip

    def _save(self, is_best: bool) -> None:
        """The epoch-end checkpoints: ``last.pt`` first (what a resume takes), then the best."""
        paths = [self.ctx.run.last_checkpoint]
        if is_best:
            paths.append(self.ctx.run.best_checkpoint(None if self.last else self.stage.name))
        self._write(*paths)

    def _write(self, *paths: Any) -> None:
        """Rank 0 writes the checkpoint of the stage as it stands to ``paths``; every rank then
        agrees on success, and a failure stops them all (:class:`CheckpointWriteError` where it
        happened, :class:`PeerFailedError` elsewhere)."""
        error = None
        if self.ctx.dist.is_main:
            ckpt = self.checkpoint()
            for path in paths:
                try:
                    ckpt.save(path)
                except OSError as err:
                    error = (path, err)
                    break
        if not self.ctx.dist.any_rank(error is not None):
            return
        if error is None:
            raise PeerFailedError("rank 0 could not write a checkpoint (its message says why)")
        path, err = error
        raise CheckpointWriteError(
            f"could not write the checkpoint {path}: {err.strerror or err}. The run stops; the "
            f"checkpoints already in {path.parent} are intact. Free disk space or fix the "
            f"folder's permissions, then continue with `bnnkit train --resume {self.ctx.run.path}`"
        ) from None

    def result(self) -> dict[str, Any]:
        """The stage's line of ``summary.json``."""
        return stage_result(self.stage, self.trainer.progress)


def stage_result(stage: StageConfig, p: StageProgress) -> dict[str, Any]:
    """A stage's line of ``summary.json`` from its progress."""
    final = next((h for h in reversed(p.history) if N.TOP1 in h), {})
    last = p.history[-1] if p.history else {}
    return {
        "stage": stage.name,
        "method": stage.method.name,
        "epochs": stage.training.epochs,
        "best_top1": p.best_top1,
        "best_top5": p.best_top5,
        "best_epoch": p.best_epoch + 1,
        "final_top1": final.get(N.TOP1),
        "final_top5": final.get(N.TOP5),
        "dynamics": {
            k: v for k, v in last.items() if k.startswith(N.DYN_PREFIX) and k.endswith(f"/{N.ALL}")
        },
    }


def run_stages(ctx: RunContext, resume: Checkpoint | None) -> None:
    """Every stage of the run in turn (from the resumed checkpoint's stage, if any); appends
    each finished stage's result to ``ctx.results``."""
    start = resume.stage_index if resume else 0
    prev_state = resume.model if resume else None
    step = resume.progress["step"] if resume else 0
    for index in range(start, len(ctx.cfg.stages)):
        stage = ctx.cfg.stages[index]
        resuming = resume if resume is not None and index == start else None
        if resuming is not None and resuming.progress["epoch"] >= stage.training.epochs:
            set_rng_state(resuming.rng)  # the next stage's init draws from the saved stream
            if len(ctx.results) <= index:  # a checkpoint of the stage's last epoch
                ctx.results.append(stage_result(stage, StageProgress(**resuming.progress)))
            continue  # that stage finished; its weights start the next one
        stage_run = StageRun(ctx, index)
        stage_run.build(prev_state, resuming, step)
        step = stage_run.train().step
        ctx.results.append(stage_run.result())
        prev_state = stage_run.model.state_dict()
