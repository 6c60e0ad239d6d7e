"""RBNN in a run: the rotation is refitted once per epoch at the epoch's first step (not again on
a mid-epoch resume, which continues exactly), the schedule and metrics reach the log, the
recipes carry the published settings, and the export refuses the centred inputs."""

from __future__ import annotations

import math
import signal

import pytest
import torch
from _helpers import events

from bnnkit.config import load_recipe
from bnnkit.export import ExportError, convert
from bnnkit.methods.irnet import ede_schedule
from bnnkit.methods.rbnn import METRIC_SIN_THETA, METRIC_T, RBNNWeightSign
from bnnkit.runs import load_checkpoint, train
from bnnkit.runs.preempt import RunPreempted
from bnnkit.runs.stages import model_from_checkpoint
from bnnkit.training import Trainer

RECIPE = {
    "data": {"name": "synthetic", "synthetic_shape": [3, 8, 8], "synthetic_classes": 4,
             "synthetic_train": 48, "synthetic_val": 16, "batch_size": 16},
    "model": {"name": "resnet20", "variant": "rbnn"},
    "method": {"name": "rbnn", "theta_init": 1.2},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "decay_rule": "all"},
    "training": {"epochs": 2, "seed": 0},
    "logging": {"log_every": 1, "progress": "off", "tensorboard": False},
}  # fmt: skip


def test_the_shipped_recipes_have_the_published_settings():
    cfg = load_recipe("cifar10/resnet20_rbnn")
    (s,) = cfg.stages
    assert (cfg.model.name, cfg.model.options["variant"]) == ("resnet20", "rbnn")
    assert (s.method.name, s.method.t_min, s.method.t_max, s.method.theta_init) == ("rbnn", 1e-2, 10.0, math.pi / 2)  # fmt: skip
    assert (s.optimizer.weight_decay, s.optimizer.decay_rule, s.training.epochs) == (1e-4, "all", 1000)  # fmt: skip
    assert (cfg.data.batch_size, s.schedule.warmup_epochs) == (256, 5)
    assert load_recipe("cifar10/resnet18_cifar_rbnn").model.options["variant"] == "rbnn"
    im = load_recipe("imagenet/resnet18_rbnn")
    assert (im.stages[0].optimizer.decay_rule, im.stages[0].training.epochs) == ("all", 150)
    assert (im.stages[0].schedule.warmup_epochs, im.data.lighting) == (0, 0.0)


def test_the_rotation_is_refitted_once_per_epoch_and_logged(tmp_path, monkeypatch):
    calls = []
    original = RBNNWeightSign.refresh

    def counted(self, weight, iters):
        calls.append(iters)
        return original(self, weight, iters)

    monkeypatch.setattr(RBNNWeightSign, "refresh", counted)
    train(RECIPE, out=tmp_path / "run")
    assert calls == [3] * (18 * 2)  # 18 layers, 2 epochs, 3 iterations each time
    ev = events(tmp_path / "run", "train")
    for e in ev:
        assert e[f"method/{METRIC_T}"] == pytest.approx(ede_schedule(e["epoch"], 2, 1e-2, 10.0)[0])
    assert 0.0 < ev[-1][f"method/{METRIC_SIN_THETA}"] < math.sin(1.2)  # weight decay pulls θ down
    final = load_checkpoint(tmp_path / "run").model
    r1 = final["layers.0.conv1.weight_binarizer.R1"].double()
    torch.testing.assert_close(r1.T @ r1, torch.eye(12, dtype=torch.float64), atol=1e-5, rtol=0)


def test_a_run_resumed_mid_epoch_does_not_refit_again_and_continues_exactly(tmp_path, monkeypatch):
    train(RECIPE, out=tmp_path / "full")
    original, seen = Trainer.train_step, []

    def signalled(self, x, y, state):
        seen.append(1)
        if len(seen) == 5:  # epoch 2, batch 2 of 3
            signal.raise_signal(signal.SIGUSR1)
        return original(self, x, y, state)

    monkeypatch.setattr(Trainer, "train_step", signalled)
    with pytest.raises(RunPreempted):
        train(RECIPE, out=tmp_path / "cut")
    monkeypatch.setattr(Trainer, "train_step", original)
    train(resume=tmp_path / "cut")
    a, b = events(tmp_path / "full", "train"), events(tmp_path / "cut", "train")
    assert [(e["step"], e["loss"]) for e in a] == [(e["step"], e["loss"]) for e in b]
    wa, wb = load_checkpoint(tmp_path / "full").model, load_checkpoint(tmp_path / "cut").model
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_trained_model_refuses_to_export_unless_inputs_are_not_centred(tmp_path):
    one = {**RECIPE, "training": {"epochs": 1, "seed": 0}}
    train(one, out=tmp_path / "run")
    with pytest.raises(ExportError, match=r"'layers\.0\.conv1'.*own mean over \(C, H, W\)"):
        convert(model_from_checkpoint(load_checkpoint(tmp_path / "run")).eval())
    train({**one, "method": {"name": "rbnn", "center_inputs": False}}, out=tmp_path / "plain")
    model = model_from_checkpoint(load_checkpoint(tmp_path / "plain")).eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        want, got = model(x), convert(model)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
