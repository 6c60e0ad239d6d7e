"""The one training loop and its parts: the engine (public ``train_step`` / ``train_epoch`` /
``evaluate``; :meth:`Trainer.epochs` yields each finished epoch to the caller), optimizers and
schedules, losses (CE, KD), distributed (torchrun) and logging. It knows no run directory."""

from bnnkit.training.build import build_model, trainer_for
from bnnkit.training.distributed import Dist, init_distributed, process_group, resolve_device
from bnnkit.training.engine import (
    EpochResult,
    NonFiniteLossError,
    StageProgress,
    StepResult,
    Trainer,
    epoch_line,
)
from bnnkit.training.evaluation import accuracy_counts, autocast_for, evaluate
from bnnkit.training.logging import RunLogger, to_number
from bnnkit.training.losses import TaskLoss, distribution_loss
from bnnkit.training.optim import build_optimizer, lr_at, param_groups, set_lr

__all__ = [
    "Dist",
    "EpochResult",
    "NonFiniteLossError",
    "RunLogger",
    "StageProgress",
    "StepResult",
    "TaskLoss",
    "Trainer",
    "accuracy_counts",
    "autocast_for",
    "build_model",
    "build_optimizer",
    "distribution_loss",
    "epoch_line",
    "evaluate",
    "init_distributed",
    "lr_at",
    "param_groups",
    "process_group",
    "resolve_device",
    "set_lr",
    "to_number",
    "trainer_for",
]
