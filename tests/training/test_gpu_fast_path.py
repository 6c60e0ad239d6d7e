"""On CUDA: a training step of every method, trackers on, never synchronises with the host.

Marked ``gpu``; skipped without CUDA (this repository's CI machine has none).
"""

from __future__ import annotations

import pytest
import torch

from bnnkit.methods import TrainState, list_methods
from bnnkit.training import trainer_for

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("method", list_methods())
def test_training_step_has_no_host_sync(method):
    recipe = {
        "model": {"name": "resnet20"},
        "method": {"name": method},
        "data": {"name": "synthetic", "synthetic_shape": [3, 32, 32], "synthetic_classes": 10},
    }
    trainer = trainer_for(recipe, "cuda", trackers=True)
    x = torch.randn(32, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")
    for step in range(2):  # warm-up: allocator, cuDNN algorithm choice
        trainer.train_step(x, y, TrainState(step, 0, 1, 0.0, 0.1, step))
        trainer.progress.step += 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(2, 4):
            trainer.train_step(x, y, TrainState(step, 0, 1, 0.0, 0.1, step))
            trainer.progress.step += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
