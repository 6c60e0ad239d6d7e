"""The training loop: the only one in bnnkit. It knows no run directory: the caller
(:mod:`bnnkit.runs`) iterates :meth:`Trainer.epochs` and saves what it wants after each epoch.

One step (:meth:`Trainer.train_step`), in this order (design notes)::

    method.on_step_start -> forward (autocast) -> loss + method.extra_losses
    -> backward (GradScaler) -> unscale -> [trackers: dead weights]
    -> method.before_optimizer_step -> clip -> optimizer.step
    -> update_sign_history (one per binary layer) -> method.after_optimizer_step
    -> [trackers: flips]

The learning rate is set before each step from the position (a pure function of it), and a
log event is written every ``log_every`` steps. The trackers (:class:`~bnnkit.diagnostics.Dynamics`,
every ``diagnostics.every`` steps) read the gradients right after ``backward`` and unscaling,
before the method's gradient rules, so "dead" means no *task* gradient; they read the signs
from the sign history, updated right after ``optimizer.step``.

Nothing inside a step reads a value back to the host: losses and the non-finite flag
accumulate on the device and are read at the log interval (and at the epoch end, before the
caller writes any checkpoint, so a NaN never reaches one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bnnkit.config import StageConfig
from bnnkit.diagnostics import Dynamics
from bnnkit.diagnostics import names as N
from bnnkit.errors import BnnkitError
from bnnkit.methods import TrainState
from bnnkit.nn import binary_layers, update_sign_history
from bnnkit.training.bop import CaseOptimizer
from bnnkit.training.distributed import Dist
from bnnkit.training.evaluation import autocast_for, evaluate
from bnnkit.training.logging import RunLogger
from bnnkit.training.losses import TaskLoss
from bnnkit.training.optim import lr_at, set_lr


class NonFiniteLossError(BnnkitError, RuntimeError):
    """Training produced a NaN or infinite loss; the run stops, the last checkpoint stays."""

    exit_status = 1
    everywhere = True  # every rank checks the all-reduced flag


@dataclass(frozen=True)
class StepResult:
    """What one step produced: device tensors (reading them syncs)."""

    loss: Tensor  # task loss + extra losses, detached
    extras: dict[str, Tensor]  # the method's extra losses
    metrics: dict[str, Tensor]  # the method's metrics


@dataclass
class EpochResult:
    """What one epoch produced (yielded by :meth:`Trainer.epochs`)."""

    stage: str
    epoch: int
    epochs: int
    step: int
    train_loss: float
    lr: float
    seconds: float
    images_per_s: float
    top1: float | None = None
    top5: float | None = None
    val_loss: float | None = None
    is_best: bool = False
    dynamics: dict[str, Any] = field(default_factory=dict)  # epoch metrics, keys "dyn/..."


@dataclass
class StageProgress:
    """Position and best metrics within a stage (saved in checkpoints).

    ``batch`` counts the batches done of epoch ``epoch`` when a checkpoint is written inside
    it (a step checkpoint: 0 at epoch ends), and ``partial`` holds that epoch's running sums
    then (:meth:`Trainer.snapshot`), so a resumed epoch logs what an uninterrupted one does.
    """

    epoch: int = 0  # epochs completed
    step: int = 0  # global optimizer steps, across stages
    best_top1: float = -1.0
    best_top5: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    batch: int = 0
    partial: dict[str, float] = field(default_factory=dict)


@dataclass
class _EpochSums:
    """The running sums of the epoch being trained (device tensors: no sync per step)."""

    loss: Tensor
    window: Tensor
    bad: Tensor
    seen: int = 0
    window_steps: int = 0
    window_images: int = 0
    last_flip: float | None = None  # the last log window's whole-model flip rate

    @classmethod
    def start(cls, device: torch.device, partial: dict[str, float]) -> _EpochSums:
        """Fresh sums, or those a step checkpoint saved (``StageProgress.partial``)."""

        def zero(value: float = 0.0) -> Tensor:
            return torch.full((), float(value), device=device)

        return cls(zero(partial.get("loss", 0.0)), zero(partial.get("window", 0.0)),
                   torch.zeros((), dtype=torch.bool, device=device),
                   int(partial.get("seen", 0)), int(partial.get("window_steps", 0)),
                   int(partial.get("window_images", 0)), partial.get("last_flip"))  # fmt: skip

    def to_partial(self) -> dict[str, float]:
        """Host values (reads the device sums: call at a checkpoint only)."""
        out = {"loss": float(self.loss), "window": float(self.window), "seen": self.seen,
               "window_steps": self.window_steps, "window_images": self.window_images}  # fmt: skip
        return out if self.last_flip is None else {**out, "last_flip": float(self.last_flip)}


class Trainer:
    """The loop of one stage: :meth:`train_step`, :meth:`train_epoch`, :meth:`epochs`.

    Args:
        stage: the stage's method and settings (optimizer lr, schedule, training section).
        model: the model (its binary layers get the method's hooks).
        optimizer: built over ``model``'s parameters (e.g. :func:`~bnnkit.training.build_optimizer`).
        forward_model: what the forward runs (a DDP or compiled wrapper of ``model``).
        scaler: a GradScaler (fp16 on CUDA), or ``None``.
        loss_fn: the task loss (default cross-entropy, the stage's label smoothing).
        dist: the process's place in a DDP job (default: one CPU process).
        logger: where log events go (default: nowhere).
        log_every: steps between log events.
        progress: where the stage stands (a resumed stage continues from it, mid-epoch too).
        dynamics: the trackers, or ``None``; updated every ``dynamics_every`` steps.
        on_step: called with the trainer after every step (``progress`` already advanced):
            where the caller writes step checkpoints and handles a stop request.
    """

    def __init__(
        self,
        stage: StageConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        forward_model: nn.Module | None = None,
        scaler: torch.amp.GradScaler | None = None,
        loss_fn: nn.Module | None = None,
        dist: Dist | None = None,
        logger: RunLogger | None = None,
        log_every: int = 50,
        progress: StageProgress | None = None,
        dynamics: Dynamics | None = None,
        dynamics_every: int = 1,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> None:
        self.stage, self.model, self.optimizer = stage, model, optimizer
        self.method = stage.method
        self.layers = binary_layers(model)
        self.forward_model = forward_model if forward_model is not None else model
        self.scaler = scaler
        self.loss_fn = loss_fn if loss_fn is not None else TaskLoss(stage.training.label_smoothing)
        self.dist = dist or Dist()
        self.logger = logger or RunLogger(enabled=False)
        self.log_every = log_every
        self.progress = progress or StageProgress()
        self.dynamics, self.dynamics_every = dynamics, dynamics_every
        self.on_step = on_step
        self._sums: _EpochSums | None = None
        self._classes: int | None = None  # logits per sample, seen at the first step
        self._warned = False
        self._epoch = 0
        self.epochs_total = stage.training.epochs
        self.autocast = autocast_for(
            stage.training.amp, self.dist.device, stage.training.fused_kernels
        )
        self.channels_last = stage.training.channels_last

    # -- one step -------------------------------------------------------------------------------
    def train_step(self, x: Tensor, y: Tensor, state: TrainState) -> StepResult:
        """One optimizer step on the batch ``(x, y)``, in the engine's fixed order."""
        method, layers = self.method, self.layers
        track = self.dynamics is not None and (self.progress.step + 1) % self.dynamics_every == 0
        method.on_step_start(layers, state)
        with self.autocast():
            out = self.forward_model(x)
            self._classes = self._classes or out.shape[-1]
            loss = self.loss_fn(out, y, x)
            extras = method.extra_losses(layers, out, y)
            total = loss + sum(extras.values()) if extras else loss
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        if track:
            self.dynamics.record_gradients()
        method.before_optimizer_step(layers, state)
        if self.stage.training.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.stage.training.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        update_sign_history(layers)
        metrics = method.after_optimizer_step(layers, state) or {}
        if track:
            self.dynamics.update(self.progress.step + 1)
        return StepResult(total.detach(), extras, metrics)

    # -- one epoch ------------------------------------------------------------------------------
    def lr_at(self, epoch: int, i: int, n: int) -> float:
        """The learning rate of step ``i`` of ``n`` in ``epoch``."""
        e = epoch + (i / n if self.stage.schedule.per_step else 0.0)
        return lr_at(self.stage.schedule, self.stage.optimizer.lr, e, self.epochs_total)

    def train_epoch(self, loader: Any, epoch: int, start: int = 0) -> EpochResult:
        """Train one epoch over ``loader`` (a :class:`~bnnkit.data.Loader`), from its batch
        ``start`` (a step checkpoint's ``progress.batch``; its sums come from ``progress``)."""
        loader.set_epoch(epoch, start)
        n = len(loader)
        self.model.train()
        self.loss_fn.train()
        partial = self.progress.partial if start else {}
        sums = self._sums = _EpochSums.start(self.dist.device, partial)
        self._epoch = epoch
        t_epoch = t_window = time.perf_counter()
        self.logger.bar_start(n, f"{self.stage.name} epoch {epoch + 1}/{self.epochs_total}")
        if start:
            self.logger.bar_update(start)
        lr = self.lr_at(epoch, start, n)
        for i, (x, y) in enumerate(loader, start=start):
            lr = self.lr_at(epoch, i, n)
            set_lr(self.optimizer, lr)
            if isinstance(self.optimizer, CaseOptimizer) and self.stage.optimizer.binary:
                self.optimizer.set_binary_position(self.stage.optimizer.binary, epoch + i / n,
                                                   self.epochs_total)  # fmt: skip
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            progress = (epoch + i / n) / self.epochs_total
            state = TrainState(self.progress.step, epoch, self.epochs_total, progress, lr, i)
            step = self.train_step(x, y, state)
            sums.bad |= ~torch.isfinite(step.loss)
            sums.loss += step.loss
            sums.window += step.loss
            sums.seen += len(y)
            sums.window_steps += 1
            sums.window_images += len(y)
            self.progress.step += 1
            self.progress.batch = i + 1
            if self.progress.step % self.log_every == 0 or i == n - 1:
                self._log_window(sums, step, epoch, lr, time.perf_counter() - t_window)
                t_window = time.perf_counter()
            if self.on_step is not None and i < n - 1:  # the epoch's end is the caller's
                self.on_step(self)
        self.logger.bar_close()
        self._check_finite(sums.bad, epoch)
        self.progress.batch, self.progress.partial = 0, {}
        seconds = time.perf_counter() - t_epoch
        train_loss = float(self.dist.all_reduce_mean(sums.loss / max(n, 1)))
        dynamics = {}
        if self.dynamics is not None:
            epoch_dyn = self.dynamics.epoch_metrics()
            dynamics = {f"{N.DYN_PREFIX}{k}": float(v) for k, v in epoch_dyn.items()}
            if sums.last_flip is not None:
                dynamics[N.dyn_key(N.FLIP)] = float(sums.last_flip)
        ips = (sums.seen - partial.get("seen", 0)) * self.dist.world_size / max(seconds, 1e-9)
        self._sums = None
        self.check_state()
        result = EpochResult(self.stage.name, epoch, self.epochs_total, self.progress.step,
                             train_loss, lr, seconds, ips, dynamics=dynamics)  # fmt: skip
        return result

    def _log_window(self, sums: _EpochSums, step: StepResult, epoch: int, lr: float,
                    elapsed: float) -> None:  # fmt: skip
        """One train event: the window's mean loss, images/s, the method's and trackers' metrics."""
        self._check_finite(sums.bad, epoch)
        ips = sums.window_images * self.dist.world_size / max(elapsed, 1e-9)
        values = {f"{N.EXTRA_LOSS_PREFIX}{k}": v for k, v in step.extras.items()}
        values |= {N.method_key(k): v for k, v in step.metrics.items()}
        if self.dynamics is not None:
            dyn = self.dynamics.step_metrics()
            values |= {f"{N.DYN_PREFIX}{k}": v for k, v in dyn.items()}
            sums.last_flip = values.get(N.dyn_key(N.FLIP), sums.last_flip)
        record = self.logger.log(
            N.TRAIN_EVENT, stage=self.stage.name, epoch=epoch, step=self.progress.step,
            loss=sums.window / sums.window_steps, lr=lr, images_per_s=ips, **values,
        )  # fmt: skip
        self.logger.bar_update(sums.window_steps, loss=record[N.LOSS], lr=f"{lr:.3g}",
                               img_s=f"{ips:.0f}")  # fmt: skip
        sums.window.zero_()
        sums.window_steps, sums.window_images = 0, 0

    def snapshot(self) -> StageProgress:
        """``progress`` with the running epoch's sums, for a checkpoint inside an epoch: checks
        the loss is finite first (a NaN never reaches a checkpoint). Reads device values."""
        if self._sums is not None:
            self._check_finite(self._sums.bad, self._epoch)
            self.progress.partial = self._sums.to_partial()
        self.check_state()
        return self.progress

    def check_state(self) -> None:
        """Raise :class:`NonFiniteLossError` naming the tensors of the model's state (weights,
        batch-norm statistics) that hold a NaN or inf: a finite loss can still overflow them,
        and such a state must never reach a checkpoint. One host read."""
        named = [(k, t) for k, t in self.model.state_dict().items() if t.is_floating_point()]
        if not named:
            return
        flags = torch.stack([~torch.isfinite(t).all() for _, t in named])
        if not bool(self.dist.all_reduce_max(flags.any().float()) > 0):
            return
        bad = [named[i][0] for i in flags.nonzero().flatten().tolist()]
        where = ", ".join(bad[:6]) + (f" (+{len(bad) - 6} more)" if len(bad) > 6 else "")
        raise NonFiniteLossError(
            f"stage {self.stage.name!r} step {self.progress.step}: the model's state holds NaN or "
            f"inf ({where or 'on another rank'}) although the loss is finite. The run stops; the "
            "last good checkpoint is kept. Lower the learning rate or enable training.grad_clip."
        )

    def _check_divergence(self, result: EpochResult) -> None:
        """Warn once per stage when an epoch's training loss is above twice that of a uniform
        guess (``2 ln C``): the weights are diverging although the loss stays finite."""
        classes = self._classes or 0
        if self._warned or classes < 2 or not result.train_loss > 2 * math.log(classes):
            return
        self._warned = True
        self.logger.message(
            f"[{self.stage.name}] warning: epoch {result.epoch + 1}'s training loss "
            f"{result.train_loss:.4g} is above 2 ln({classes}) = {2 * math.log(classes):.3g} (a "
            "uniform guess scores ln C): training is diverging. Lower optimizer.lr or set "
            "training.grad_clip"
        )

    def _check_finite(self, bad: Tensor, epoch: int) -> None:
        if bool(self.dist.all_reduce_max(bad.float()) > 0):
            raise NonFiniteLossError(
                f"stage {self.stage.name!r} epoch {epoch + 1}: the loss became NaN or infinite "
                f"(step <= {self.progress.step}). The run stops; the last good checkpoint is kept. "
                "Lower the learning rate, enable training.grad_clip, or check the data."
            )

    # -- the stage ------------------------------------------------------------------------------
    def epochs(self, train_loader: Any, val_loader: Any) -> Iterator[EpochResult]:
        """Train the remaining epochs of the stage (from ``progress.epoch``), yielding each
        finished one: evaluated (every ``eval_every`` epochs and the last), logged, and with
        ``progress`` already advanced, so what the caller saves resumes after it."""
        p, training = self.progress, self.stage.training
        for epoch in range(p.epoch, self.epochs_total):
            result = self.train_epoch(train_loader, epoch, p.batch if epoch == p.epoch else 0)
            if epoch == self.epochs_total - 1 or (epoch + 1) % training.eval_every == 0:
                metrics = evaluate(self.forward_model, val_loader, self.dist, self.autocast)
                result.top1, result.top5 = metrics[N.TOP1], metrics[N.TOP5]
                result.val_loss = metrics[N.LOSS]
                result.is_best = metrics[N.TOP1] > p.best_top1
                if result.is_best:
                    p.best_top1, p.best_top5, p.best_epoch = result.top1, result.top5, epoch
            p.epoch = epoch + 1
            fields = {k: v for k, v in vars(result).items() if v is not None and k != "dynamics"}
            record = self.logger.log(N.EPOCH_EVENT, **fields, **result.dynamics)
            # checkpoints keep the whole-model dynamics only (per-layer values are in metrics.jsonl)
            p.history.append({k: v for k, v in record.items()
                              if not k.startswith(N.DYN_PREFIX) or k.endswith(f"/{N.ALL}")})  # fmt: skip
            self.logger.message(epoch_line(result))
            self._check_divergence(result)
            yield result


def epoch_line(r: EpochResult) -> str:
    """The one-line summary of an epoch printed during training."""
    acc = ""
    if r.top1 is not None:
        acc = f" | val top1 {r.top1:.2f}% top5 {r.top5:.2f}%" + (" *" if r.is_best else "")
    dyn = ""
    if N.dyn_key(N.OSCILLATION) in r.dynamics:
        osc, silent = r.dynamics[N.dyn_key(N.OSCILLATION)], r.dynamics[N.dyn_key(N.SILENT)]
        dyn = f" | oscillation {100 * osc:.2f}% silent {100 * silent:.1f}%"
    return (f"[{r.stage}] epoch {r.epoch + 1}/{r.epochs} | loss {r.train_loss:.4f} | lr {r.lr:.3g} "
            f"| {r.images_per_s:.0f} img/s | {r.seconds:.1f}s{dyn}{acc}")  # fmt: skip
