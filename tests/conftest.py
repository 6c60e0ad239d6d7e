from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnkit.methods import Method, TrainState, binary_layers


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
    """A minimal loop calling the method hooks in the engine's order; returns the losses."""
    layers = binary_layers(model)
    groups = method.param_groups(model)
    opt = torch.optim.SGD([{"params": g["params"]} for g in groups], lr=lr, momentum=0.9)
    losses = []
    for step in range(steps):
        state = TrainState(step=step, epoch=0, epochs=epochs, progress=step / steps, lr=lr)
        method.on_step_start(layers, state)
        out = model(x)
        loss = nn.functional.cross_entropy(out, y)
        for extra in method.extra_losses(layers, out, y).values():
            loss = loss + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        method.before_optimizer_step(layers, state)
        opt.step()
        method.after_optimizer_step(layers, state)
        losses.append(float(loss.detach()))
    return losses


@pytest.fixture
def run_steps():
    return train_steps
