"""Bop in a whole run: its recipes, the trackers' numbers on ±1 weights, and an exact resume
from a step checkpoint (the case optimizer's state and γ schedule continue)."""

from __future__ import annotations

import torch
from _helpers import events

from bnnkit.config import load_recipe
from bnnkit.runs import load_checkpoint, train

RECIPE = {
    "data": {"name": "synthetic", "synthetic_shape": [12], "synthetic_classes": 4,
             "synthetic_train": 256, "synthetic_val": 64, "batch_size": 32},
    "model": {"name": "mlp", "in_features": 12, "hidden": 32, "depth": 2},
    "method": {"name": "bop"},
    "optimizer": {"name": "adam", "lr": 0.01, "binary": {
        "gamma": 1e-3, "threshold": 1e-6, "gamma_schedule": {"name": "linear", "final": 1e-5}}},
    "training": {"epochs": 3, "seed": 1, "checkpoint_every_steps": 5, "keep_checkpoints": 10},
    "logging": {"log_every": 1, "progress": "off", "tensorboard": False},
}  # fmt: skip


def test_the_shipped_recipes_have_the_papers_settings():
    s = load_recipe("cifar10/vgg_small_bop").stages[0]
    b = s.optimizer.binary
    assert (s.optimizer.name, s.optimizer.lr, s.optimizer.eps, s.schedule.name) == (
        "adam",
        0.01,
        1e-7,
        "constant",
    )
    assert (b.gamma, b.threshold, b.gamma_schedule.milestones, b.gamma_schedule.factor) == (
        1e-4,
        1e-8,
        (100, 200, 300, 400),
        0.1,
    )
    assert s.training.epochs == 500 and s.method.inputs == "ste_sign"
    s = load_recipe("imagenet/resnet18_bop").stages[0]
    assert (
        s.optimizer.binary.gamma_schedule.name == "linear"
        and s.optimizer.binary.gamma_schedule.final == 1e-6
    )
    assert (
        s.method.inputs == "approx_sign" and s.training.epochs == 300 and s.optimizer.lr == 2.5e-3
    )


def test_trackers_read_the_binary_weights_and_a_resume_is_exact(tmp_path):
    result = train(RECIPE, out=tmp_path / "full")
    dyn = result.dynamics
    assert dyn["dyn/oscillation/all"] > 0 and 0 < dyn["dyn/silent/all"] < 1  # flips of ±1 weights
    assert dyn["dyn/qerr/all"] == 0.0  # the stored weight is the binary one
    w = load_checkpoint(tmp_path / "full").model["body.0.weight"]
    assert set(w.unique().tolist()) == {-1.0, 1.0}
    step = sorted((tmp_path / "full" / "checkpoints").glob("step-*.pt"))[2]  # step 15, epoch 2
    train(resume=step, out=tmp_path / "resumed")
    a = {e["step"]: e["loss"] for e in events(tmp_path / "full", "train")}
    b = events(tmp_path / "resumed", "train")
    assert b and all(a[e["step"]] == e["loss"] for e in b)
    wa, wb = load_checkpoint(tmp_path / "full").model, load_checkpoint(tmp_path / "resumed").model
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
