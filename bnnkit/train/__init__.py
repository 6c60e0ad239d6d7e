"""Training: recipes, the engine, checkpoints, logging, distillation, multi-GPU."""

from bnnkit.train.checkpoint import CheckpointError, load_checkpoint
from bnnkit.train.config import ConfigError, RunConfig, list_recipes, load_recipe
from bnnkit.train.engine import EpochResult, NonFiniteLossError, evaluate
from bnnkit.train.losses import TaskLoss, distribution_loss
from bnnkit.train.run import (
    RunResult,
    evaluate_checkpoint,
    format_result,
    model_from_checkpoint,
    train,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "EpochResult",
    "NonFiniteLossError",
    "RunConfig",
    "RunResult",
    "TaskLoss",
    "distribution_loss",
    "evaluate",
    "evaluate_checkpoint",
    "format_result",
    "list_recipes",
    "load_checkpoint",
    "load_recipe",
    "model_from_checkpoint",
    "train",
]
