"""Training: recipes, the engine, checkpoints, logging, distillation, multi-GPU.

``bnnkit.train`` is also callable: ``bnnkit.train(recipe_or_path, **overrides)`` is
:func:`bnnkit.train.run.train` (the public API of design.md), while ``bnnkit.train.<name>``
keeps giving the subpackage's modules and functions.
"""

import sys
import types

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


class _CallableModule(types.ModuleType):
    """This package, callable as :func:`train` (a function and a subpackage share the name)."""

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
