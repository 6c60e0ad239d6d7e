"""The training loop: the only one in bnnkit.

One step, in this order (design.md)::

    learning rate (a pure function of the position) -> method.on_step_start -> forward
    (autocast) -> loss + method.extra_losses -> backward (GradScaler) -> unscale
    -> [dynamics: dead weights] -> method.before_optimizer_step -> clip -> optimizer.step
    -> method.after_optimizer_step -> [dynamics: flips] -> log (every ``log_every`` steps)

The dynamics trackers (:class:`bnnkit.diagnostics.Dynamics`, every ``diagnostics.every``
steps) read the gradients right after ``backward`` and unscaling, before the method's gradient
rules, so "dead" means no *task* gradient; they read the signs after the method's
``after_optimizer_step`` (which may clamp weights).

and per epoch: evaluation, then ``last.pt`` / ``best.pt``. Nothing inside a step reads a
value back to the host: losses and the non-finite flag accumulate on the device and are read
at the log interval (and at the epoch end, before any checkpoint is written, so a NaN never
reaches a checkpoint).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bnnkit.data.base import DataBundle
from bnnkit.diagnostics import Dynamics
from bnnkit.methods import TrainState, binary_layers
from bnnkit.train.config import StageConfig
from bnnkit.train.distributed import Dist
from bnnkit.train.logging import RunLogger
from bnnkit.train.losses import TaskLoss
from bnnkit.train.optim import lr_at, set_lr


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run stops, the last checkpoint stays."""


@dataclass
class EpochResult:
    """What one epoch produced (passed to callbacks)."""

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
    """Position and best metrics within a stage (saved in checkpoints)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # global optimizer steps, across stages
    best_top1: float = -1.0
    best_top5: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)


def accuracy_counts(logits: Tensor, targets: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """Number of top-1 and top-k hits in a batch (device tensors, no sync)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top == targets.unsqueeze(1)
    return hits[:, 0].sum(), hits.any(dim=1).sum()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, dist: Dist, autocast: Callable[[], Any]
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over the (sharded) loader."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=dist.device)  # top1, top5, loss, n
    for x, y in loader:
        with autocast():
            out = model(x)
        t1, t5 = accuracy_counts(out, y)
        loss = nn.functional.cross_entropy(out.float(), y, reduction="sum")
        totals += torch.stack(
            [
                t1.double(),
                t5.double(),
                loss.double(),
                torch.tensor(float(len(y)), dtype=torch.float64, device=dist.device),
            ]
        )
    model.train(was_training)
    totals = dist.all_reduce_sum(totals)
    n = max(float(totals[3]), 1.0)
    return {
        "top1": 100 * float(totals[0]) / n,
        "top5": 100 * float(totals[1]) / n,
        "loss": float(totals[2]) / n,
        "samples": int(n),
    }


class StageTrainer:
    """Runs the epochs of one stage; ``fit`` returns when the stage is done."""

    def __init__(
        self,
        *,
        stage: StageConfig,
        model: nn.Module,
        forward_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        loss_fn: TaskLoss,
        data: DataBundle,
        dist: Dist,
        logger: RunLogger,
        log_every: int,
        progress: StageProgress,
        save: Callable[[StageProgress, bool], None],
        callbacks: Sequence[Callable[[EpochResult], None]] = (),
        dynamics: Dynamics | None = None,
        dynamics_every: int = 1,
        on_epoch_end: Callable[[int], None] | None = None,
    ) -> None:
        self.stage, self.model, self.forward_model = stage, model, forward_model
        self.method = stage.method
        self.layers = binary_layers(model)
        self.optimizer, self.scaler, self.loss_fn = optimizer, scaler, loss_fn
        self.data, self.dist, self.logger = data, dist, logger
        self.log_every, self.progress, self.save = log_every, progress, save
        self.callbacks = callbacks
        self.dynamics = dynamics
        self.dynamics_every = dynamics_every
        self.on_epoch_end = on_epoch_end
        self.epochs = stage.training.epochs
        self.base_lr = stage.optimizer.lr
        self.autocast = _autocast_factory(stage.training.amp, dist.device)
        self.channels_last = stage.training.channels_last and dist.device.type == "cuda"

    def _lr(self, epoch: int, i: int, n: int) -> float:
        e = epoch + (i / n if self.stage.schedule.per_step else 0.0)
        return lr_at(self.stage.schedule, self.base_lr, e, self.epochs)

    def _step(
        self, x: Tensor, y: Tensor, state: TrainState
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        step = self.progress.step + 1  # the number this step is logged under
        track = self.dynamics is not None and step % self.dynamics_every == 0
        self.method.on_step_start(self.layers, state)
        with self.autocast():
            out = self.forward_model(x)
            loss = self.loss_fn(out, y, x)
            extras = self.method.extra_losses(self.layers, out, y)
            total = loss + sum(extras.values()) if extras else loss
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        if track:
            self.dynamics.record_gradients()
        self.method.before_optimizer_step(self.layers, state)
        if self.stage.training.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.stage.training.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        metrics = self.method.after_optimizer_step(self.layers, state) or {}
        if track:
            self.dynamics.update(step)
        return total.detach(), extras, metrics

    def train_epoch(self, epoch: int) -> EpochResult:
        loader = self.data.train
        loader.set_epoch(epoch)
        n = len(loader)
        self.model.train()
        self.loss_fn.train()
        device = self.dist.device
        loss_sum = torch.zeros((), device=device)
        window = torch.zeros((), device=device)
        bad = torch.zeros((), dtype=torch.bool, device=device)
        seen, window_steps, window_images = 0, 0, 0
        t_epoch = t_window = time.perf_counter()
        self.logger.bar_start(n, f"{self.stage.name} epoch {epoch + 1}/{self.epochs}")
        lr = self._lr(epoch, 0, n)
        last_flip = None  # the last log window's whole-model flip rate
        for i, (x, y) in enumerate(loader):
            lr = self._lr(epoch, i, n)
            set_lr(self.optimizer, lr)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            state = TrainState(
                self.progress.step, epoch, self.epochs, (epoch + i / n) / self.epochs, lr
            )
            total, extras, metrics = self._step(x, y, state)
            bad |= ~torch.isfinite(total)
            loss_sum += total
            window += total
            seen += len(y)
            window_steps += 1
            window_images += len(y)
            self.progress.step += 1
            if self.progress.step % self.log_every == 0 or i == n - 1:
                self._check_finite(bad, epoch)
                elapsed = time.perf_counter() - t_window
                ips = window_images * self.dist.world_size / max(elapsed, 1e-9)
                values = {f"loss/{k}": v for k, v in extras.items()} | {
                    f"method/{k}": v for k, v in metrics.items()
                }
                if self.dynamics is not None:
                    values |= {f"dyn/{k}": v for k, v in self.dynamics.step_metrics().items()}
                    last_flip = values.get("dyn/flip/all", last_flip)
                record = self.logger.log(
                    "train",
                    stage=self.stage.name,
                    epoch=epoch,
                    step=self.progress.step,
                    loss=window / window_steps,
                    lr=lr,
                    images_per_s=ips,
                    **values,
                )
                self.logger.bar_update(
                    window_steps, loss=record["loss"], lr=f"{lr:.3g}", img_s=f"{ips:.0f}"
                )
                window.zero_()
                window_steps, window_images, t_window = 0, 0, time.perf_counter()
        self.logger.bar_close()
        self._check_finite(bad, epoch)
        seconds = time.perf_counter() - t_epoch
        train_loss = float(self.dist.all_reduce_mean(loss_sum / max(n, 1)))
        dynamics = {}
        if self.dynamics is not None:
            dynamics = {f"dyn/{k}": float(v) for k, v in self.dynamics.epoch_metrics().items()}
            if last_flip is not None:
                dynamics["dyn/flip/all"] = float(last_flip)
        return EpochResult(
            self.stage.name,
            epoch,
            self.epochs,
            self.progress.step,
            train_loss,
            lr,
            seconds,
            seen * self.dist.world_size / max(seconds, 1e-9),
            dynamics=dynamics,
        )

    def _check_finite(self, bad: Tensor, epoch: int) -> None:
        if bool(self.dist.all_reduce_max(bad.float()) > 0):
            raise NonFiniteLossError(
                f"stage {self.stage.name!r} epoch {epoch + 1}: the loss became NaN or infinite "
                f"(step <= {self.progress.step}). The run stops; the last good checkpoint is kept. "
                "Lower the learning rate, enable training.grad_clip, or check the data."
            )

    def fit(self) -> StageProgress:
        """Train the remaining epochs of the stage (resuming at ``progress.epoch``)."""
        p = self.progress
        for epoch in range(p.epoch, self.epochs):
            result = self.train_epoch(epoch)
            last = epoch == self.epochs - 1
            if last or (epoch + 1) % self.stage.training.eval_every == 0:
                metrics = evaluate(self.forward_model, self.data.val, self.dist, self.autocast)
                result.top1, result.top5, result.val_loss = (
                    metrics["top1"],
                    metrics["top5"],
                    metrics["loss"],
                )
                result.is_best = metrics["top1"] > p.best_top1
                if result.is_best:
                    p.best_top1, p.best_top5, p.best_epoch = metrics["top1"], metrics["top5"], epoch
            p.epoch = epoch + 1
            fields = {k: v for k, v in vars(result).items() if v is not None and k != "dynamics"}
            record = self.logger.log("epoch", **fields, **result.dynamics)
            # checkpoints keep the whole-model dynamics only (per-layer values are in metrics.jsonl)
            p.history.append(
                {k: v for k, v in record.items() if not k.startswith("dyn/") or k.endswith("/all")}
            )
            self.logger.message(_epoch_line(result))
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch)
            self.save(p, result.is_best)
            for callback in self.callbacks:
                callback(result)
        return p


def _epoch_line(r: EpochResult) -> str:
    acc = (
        f" | val top1 {r.top1:.2f}% top5 {r.top5:.2f}%" + (" *" if r.is_best else "")
        if r.top1 is not None
        else ""
    )
    dyn = ""
    if "dyn/oscillation/all" in r.dynamics:
        d = r.dynamics
        dyn = (
            f" | flip {100 * d['dyn/oscillation/all']:.2f}% silent {100 * d['dyn/silent/all']:.1f}%"
        )
    return f"[{r.stage}] epoch {r.epoch + 1}/{r.epochs} | loss {r.train_loss:.4f} | lr {r.lr:.3g} | {r.images_per_s:.0f} img/s | {r.seconds:.1f}s{dyn}{acc}"


def _autocast_factory(amp: str, device: torch.device) -> Callable[[], Any]:
    if amp == "none" or device.type != "cuda":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type="cuda", dtype=dtype)
