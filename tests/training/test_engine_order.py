"""The engine's fixed step order, observed through the real loop (``Trainer.epochs`` ->
``train_epoch`` -> ``train_step``) with a probe method and probes on everything it calls.

Documented order (bnnkit/training/engine.py and the design notes)::

    on_step_start -> forward -> loss -> extra_losses -> backward -> unscale
    -> trackers.record_gradients -> before_optimizer_step -> clip -> optimizer.step
    -> sign_history.update -> after_optimizer_step -> trackers.update
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

import bnnkit
from bnnkit.binarize import ClippedSTESign
from bnnkit.config import load_recipe
from bnnkit.data import DataConfig, build_data
from bnnkit.diagnostics import Dynamics
from bnnkit.methods import Method, binarize_
from bnnkit.nn import SignHistory
from bnnkit.training import StageProgress, TaskLoss, Trainer, build_optimizer

EVENTS: list[str] = []
STATES: list = []

ORDER = [
    "on_step_start", "forward", "loss", "extra_losses", "backward", "unscale",
    "trackers.record_gradients", "before_optimizer_step", "clip", "optimizer.step",
    "sign_history.update", "after_optimizer_step", "trackers.update",
]  # fmt: skip


@dataclass(frozen=True)
class Probe(Method):
    """Records each hook (not registered: a method need not be)."""

    name: ClassVar[str] = "probe"

    def build_weight_binarizer(self, layer):
        return ClippedSTESign()

    def build_input_binarizer(self, layer):
        return ClippedSTESign()

    def on_step_start(self, layers, state):
        EVENTS.append("on_step_start")
        STATES.append(state)

    def extra_losses(self, layers, outputs, targets):
        EVENTS.append("extra_losses")
        return {"probe_zero": outputs.sum() * 0.0}

    def before_optimizer_step(self, layers, state):
        EVENTS.append("before_optimizer_step")

    def after_optimizer_step(self, layers, state):
        EVENTS.append("after_optimizer_step")
        # the shared sign history already holds the signs of the weights after this step
        for _, layer in layers:
            assert torch.equal(layer.sign_history.negative, layer.sign_input() < 0)
        return {"probe/steps": torch.tensor(float(len(STATES)))}


class RecordingLoss(TaskLoss):
    def forward(self, outputs, targets, inputs):
        EVENTS.append("loss")
        return super().forward(outputs, targets, inputs)


def _record(name):
    def hook(*args, **kwargs):
        if not EVENTS or EVENTS[-1] != name:  # one event per call site (several layers)
            EVENTS.append(name)

    return hook


def _on_forward(module, inputs, out):
    if out.requires_grad:  # a training forward (evaluation runs without autograd)
        EVENTS.append("forward")
        out.register_hook(_record("backward"))


@pytest.fixture
def probed(monkeypatch):
    """A trainer of the probe method on 4 steps of synthetic data, every collaborator probed."""
    EVENTS.clear()
    STATES.clear()
    recipe = {
        "data": {"name": "synthetic", "synthetic_shape": [12], "synthetic_classes": 3,
                 "synthetic_train": 32, "synthetic_val": 16, "batch_size": 8},
        "model": {"name": "mlp", "in_features": 12, "hidden": 16},
        "method": "ste",
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "schedule": {"name": "linear", "step_at": "end", "per_step": True},
        "training": {"epochs": 2, "grad_clip": 10.0},
    }  # fmt: skip
    stage = load_recipe(recipe).stages[0]
    stage = type(stage)(**{**stage.__dict__, "method": Probe()})
    model = binarize_(bnnkit.create_model("mlp", in_features=12, hidden=16, num_classes=3), Probe())
    model.register_forward_hook(_on_forward)
    optimizer = build_optimizer(model, stage.method, stage.optimizer)
    step = optimizer.step
    monkeypatch.setattr(optimizer, "step", lambda *a, **k: (EVENTS.append("optimizer.step"), step(*a, **k))[1])  # fmt: skip
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    unscale = scaler.unscale_
    monkeypatch.setattr(scaler, "unscale_", lambda opt: (EVENTS.append("unscale"), unscale(opt))[1])
    clip = nn.utils.clip_grad_norm_
    monkeypatch.setattr(nn.utils, "clip_grad_norm_", lambda *a, **k: (EVENTS.append("clip"), clip(*a, **k))[1])  # fmt: skip
    update = SignHistory.update
    monkeypatch.setattr(SignHistory, "update", lambda self, s: (_record("sign_history.update")(), update(self, s))[1])  # fmt: skip
    dyn = Dynamics(model)
    rec, upd = dyn.record_gradients, dyn.update
    monkeypatch.setattr(dyn, "record_gradients", lambda: (EVENTS.append("trackers.record_gradients"), rec())[1])  # fmt: skip
    monkeypatch.setattr(dyn, "update", lambda step=None: (EVENTS.append("trackers.update"), upd(step))[1])  # fmt: skip
    trainer = Trainer(stage, model, optimizer, scaler=scaler, loss_fn=RecordingLoss(),
                      progress=StageProgress(), dynamics=dyn, log_every=2)  # fmt: skip
    data = build_data(DataConfig(**recipe["data"]), seed=0)
    return trainer, data


def test_every_step_runs_the_documented_order_through_the_real_loop(probed):
    trainer, data = probed
    results = list(trainer.epochs(data.train, data.val))
    assert len(results) == 2 and len(STATES) == 8  # 2 epochs x 4 steps
    steps = [EVENTS[i : i + len(ORDER)] for i in range(0, len(EVENTS), len(ORDER))]
    assert all(s == ORDER for s in steps), next(s for s in steps if s != ORDER)


def test_train_state_and_learning_rate_follow_the_position(probed):
    trainer, data = probed
    lrs = []
    original = trainer.train_step

    def step(x, y, state):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])  # what the optimizer will use
        return original(x, y, state)

    trainer.train_step = step
    list(trainer.epochs(data.train, data.val))
    assert [s.step for s in STATES] == list(range(8))
    assert [s.epoch for s in STATES] == [0] * 4 + [1] * 4
    assert [s.progress for s in STATES] == [i / 8 for i in range(8)]
    # linear decay per step: lr (1 - e / E) with e = epoch + i / n, set before the step
    expected = [0.1 * (1 - (i / 4) / 2) for i in range(8)]
    assert lrs == pytest.approx(expected) and [s.lr for s in STATES] == pytest.approx(expected)


def test_epochs_yields_each_epoch_evaluated_with_progress_advanced(probed):
    trainer, data = probed
    seen = []
    for result in trainer.epochs(data.train, data.val):
        seen.append((result.epoch, trainer.progress.epoch, trainer.progress.step))
        assert result.top1 is not None and 0.0 <= result.top1 <= 100.0
        assert trainer.progress.history[-1]["epoch"] == result.epoch
    assert seen == [(0, 1, 4), (1, 2, 8)]


def test_a_step_returns_device_tensors_with_the_methods_extras_and_metrics(probed):
    trainer, data = probed
    x, y = next(iter(data.train))
    from bnnkit.methods import TrainState

    out = trainer.train_step(x, y, TrainState())
    assert isinstance(out.loss, torch.Tensor) and out.loss.ndim == 0 and not out.loss.requires_grad
    assert set(out.extras) == {"probe_zero"} and set(out.metrics) == {"probe/steps"}
    assert EVENTS[: len(ORDER)] == ORDER
