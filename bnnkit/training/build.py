"""Building what one stage trains from its recipe: the model with the stage's method attached,
and a :class:`~bnnkit.training.Trainer` with no data or run directory (benchmarks, tests)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnnkit.config import RunConfig, StageConfig, load_recipe
from bnnkit.diagnostics import Dynamics
from bnnkit.methods import binarize_
from bnnkit.models import create_model
from bnnkit.training.distributed import Dist
from bnnkit.training.engine import Trainer
from bnnkit.training.optim import build_optimizer


def build_model(cfg: RunConfig, stage: StageConfig, num_classes: int) -> nn.Module:
    """The recipe's model with the stage's method attached."""
    model = create_model(cfg.model.name, num_classes=num_classes, **cfg.model.options)
    return binarize_(model, stage.method, pad_value=cfg.model.pad_value or None)


def trainer_for(
    recipe: str | dict[str, Any], device: torch.device | str = "cpu", *, trackers: bool = False
) -> Trainer:
    """A :class:`Trainer` for the recipe's first stage (classes from ``data.synthetic_classes``)
    with no data, logging or run directory: call its public ``train_step(x, y, state)``."""
    cfg = load_recipe(recipe)
    stage = cfg.stages[0]
    device = torch.device(device)
    model = build_model(cfg, stage, cfg.data.synthetic_classes).to(device)
    optimizer = build_optimizer(model, stage.method, stage.optimizer)
    dynamics = Dynamics(model) if trackers else None
    return Trainer(stage, model, optimizer, dist=Dist(device=device), log_every=10**9,
                   dynamics=dynamics)  # fmt: skip
