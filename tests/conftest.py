from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnkit.config import KDConfig, OptimizerConfig, ScheduleConfig, StageConfig, TrainingConfig
from bnnkit.config.schema import BinaryOptimizerConfig
from bnnkit.methods import Method, TrainState
from bnnkit.training import Trainer, build_optimizer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def train_steps(
    model: nn.Module,
    method: Method,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 3,
    lr: float = 0.05,
    epochs: int = 1,
) -> list[float]:
    """``steps`` steps of bnnkit's own engine (:meth:`bnnkit.training.Trainer.train_step`: the
    method hooks in the engine's order, the sign-history update) with SGD (momentum 0.9, no
    weight decay) at a constant ``lr`` (and Bop, its defaults, for a latent-free method's ±1
    weights); returns the losses."""
    binary = BinaryOptimizerConfig() if method.latent_free else None  # Bop's defaults
    stage = StageConfig(
        name="test", method=method,
        optimizer=OptimizerConfig(name="sgd", lr=lr, momentum=0.9, binary=binary),
        schedule=ScheduleConfig(name="constant"), training=TrainingConfig(epochs=epochs),
        kd=KDConfig(),
    )  # fmt: skip
    trainer = Trainer(stage, model, build_optimizer(model, method, stage.optimizer))
    losses = []
    for step in range(steps):
        state = TrainState(step=step, epoch=0, epochs=epochs, progress=step / steps, lr=lr,
                           batch=step)  # fmt: skip
        losses.append(float(trainer.train_step(x, y, state).loss))
        trainer.progress.step += 1
    return losses


@pytest.fixture
def run_steps():
    return train_steps
