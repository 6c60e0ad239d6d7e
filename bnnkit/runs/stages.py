"""One stage of a run, end to end: build the model (from the previous stage's weights, or the
checkpoint being resumed), its optimizer, trackers and KD teacher, wrap it for DDP / compile,
then train it through :meth:`bnnkit.training.Trainer.epochs`, writing after each epoch the
dynamics dumps and the checkpoints.
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
        if stage.training.channels_last and dist.device.type == "cuda":
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
        if stage.training.amp != "none" and dist.device.type != "cuda":
            ctx.logger.message(f"[{stage.name}] training.amp={stage.training.amp} ignored: "
                               "autocast is used on CUDA only")  # fmt: skip
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
        loss_fn = TaskLoss(
            stage.training.label_smoothing, teacher, stage.kd.alpha, stage.kd.temperature
        )
        self.trainer = Trainer(
            stage, model, optimizer, forward_model=_wrap(model, stage, dist), scaler=scaler,
            loss_fn=loss_fn, dist=dist, logger=ctx.logger, log_every=ctx.cfg.logging.log_every,
            progress=progress, dynamics=self.dynamics, dynamics_every=ctx.cfg.diagnostics.every,
        )  # fmt: skip

    def _start_dynamics(
        self, model: nn.Module, step: int, resume: Checkpoint | None
    ) -> Dynamics | None:
        """The stage's trackers (None when disabled or nothing is binarized); a resumed stage
        continues the saved counts, a new one counts from its starting weights."""
        ctx, stage = self.ctx, self.stage
        has_binary = any(m.weight_binarizer is not None for _, m in binary_layers(model))
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
        """The remaining epochs; after each: dynamics dumps, checkpoints, callbacks."""
        trainer = self.trainer
        for result in trainer.epochs(self.ctx.data.train, self.ctx.data.val):
            if self.ctx.dist.is_main:
                self._write_dynamics(result.epoch)
                self._save(result.is_best)
            for callback in self.ctx.callbacks:
                callback(result)
        return trainer.progress

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
        ckpt = self.checkpoint()
        if is_best:
            ckpt.save(self.ctx.run.best_checkpoint(None if self.last else self.stage.name))
        ckpt.save(self.ctx.run.last_checkpoint)

    def result(self) -> dict[str, Any]:
        """The stage's line of ``summary.json``."""
        p = self.trainer.progress
        final = next((h for h in reversed(p.history) if N.TOP1 in h), {})
        last = p.history[-1] if p.history else {}
        return {
            "stage": self.stage.name,
            "method": self.stage.method.name,
            "epochs": self.stage.training.epochs,
            "best_top1": p.best_top1,
            "best_top5": p.best_top5,
            "best_epoch": p.best_epoch + 1,
            "final_top1": final.get(N.TOP1),
            "final_top5": final.get(N.TOP5),
            "dynamics": {
                k: v
                for k, v in last.items()
                if k.startswith(N.DYN_PREFIX) and k.endswith(f"/{N.ALL}")
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
            continue  # that stage finished; its weights start the next one
        stage_run = StageRun(ctx, index)
        stage_run.build(prev_state, resuming, step)
        step = stage_run.train().step
        ctx.results.append(stage_run.result())
        prev_state = stage_run.model.state_dict()
