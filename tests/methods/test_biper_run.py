"""BiPer in a run: the two-stage recipe (sine, then binary) carries W and α across stages,
keeps ω across stages, logs its metrics and loss, and its binary stage exports."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import events

import bnnkit
from bnnkit.config import ConfigError, load_recipe
from bnnkit.methods.biper import METRIC_QE, METRIC_WRAPPED
from bnnkit.runs import load_checkpoint, train

RECIPE = {
    "data": {"name": "synthetic", "synthetic_shape": [3, 8, 8], "synthetic_classes": 4,
             "synthetic_train": 64, "synthetic_val": 32, "batch_size": 16},
    "model": {"name": "resnet20"},
    "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
    "logging": {"log_every": 1, "progress": "off", "tensorboard": False},
    "stages": [
        {"name": "stage1", "method": {"name": "biper", "weights": "sine", "reg": 0.037},
         "training": {"epochs": 1, "seed": 0}},
        {"name": "stage2", "method": {"name": "biper", "weights": "binary", "reg": 0.0468},
         "training": {"epochs": 1}},
    ],
}  # fmt: skip


def test_the_shipped_recipes_have_the_published_settings():
    cfg = load_recipe("cifar10/resnet18_cifar_biper")
    s1, s2 = cfg.stages
    assert (s1.method.weights, s1.method.omega, s1.method.reg) == ("sine", 20.0, 0.037)
    assert (s2.method.weights, s2.method.omega, s2.method.reg) == ("binary", 20.0, 0.0468)
    assert (s1.optimizer.lr, s1.optimizer.weight_decay, s1.training.epochs) == (0.021, 0.0016, 600)
    assert (s2.optimizer.lr, s2.optimizer.weight_decay, s2.training.epochs) == (0.0037, 1.6e-4, 300)
    im = load_recipe("imagenet/resnet18_biper").stages
    assert [s.method.reg for s in im] == [0.0, 0.0] and im[1].schedule.warmup_epochs == 0
    assert load_recipe("imagenet/resnet34_biper").model.name == "resnet34"


def test_stage_2_must_keep_stage_1s_omega():
    with pytest.raises(ConfigError, match=r"^stages\.1\.method: biper's omega = 30 differs .* 20"):
        load_recipe("cifar10/resnet18_cifar_biper", ["stages.1.method.omega=30"])


def test_two_stages_carry_the_weights_and_alpha_and_log_the_method(tmp_path):
    train(RECIPE, out=tmp_path / "run")
    step1 = load_checkpoint(tmp_path / "run" / "checkpoints" / "stage1-best.pt").model
    last = load_checkpoint(tmp_path / "run").model
    assert "layers.0.conv1.sign_history.negative" not in step1  # stage 1 is W32A1: no history
    assert "layers.0.conv1.sign_history.negative" in last
    ev = events(tmp_path / "run", "train")
    first2 = next(e for e in ev if e["stage"] == "stage2")
    n_layers = len(bnnkit.binary_layers(bnnkit.binarize_(bnnkit.create_model("resnet20"), "biper")))
    assert 0.0 < ev[0]["loss/biper/sin2"] < 0.037 * n_layers  # τ Σ_l mean(sin²), each mean < 1
    assert (
        0.0 < first2[f"method/{METRIC_QE}"] < 1.0
        and 0.0 <= first2[f"method/{METRIC_WRAPPED}"] < 0.5
    )


def test_the_metrics_by_hand():
    method = bnnkit.get_method("biper", omega=10.0)
    conv = bnnkit.nn.BinaryConv2d(1, 1, 1, bias=False)
    bnnkit.binarize_(torch.nn.Sequential(conv), method)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.1]).view(1, 1, 1, 1))  # omega*w = 1 rad: no wrap
    m = method.after_optimizer_step(bnnkit.binary_layers(torch.nn.Sequential(conv)), None)
    assert float(m[METRIC_QE]) == pytest.approx(1 - math.sin(1.0))
    assert float(m[METRIC_WRAPPED]) == 0.0
    with torch.no_grad():
        conv.weight.fill_(0.4)  # 4 rad: sin < 0 although w > 0
    m = method.after_optimizer_step(bnnkit.binary_layers(torch.nn.Sequential(conv)), None)
    assert float(m[METRIC_WRAPPED]) == 1.0
    assert float(m[METRIC_QE]) == pytest.approx(1 - abs(math.sin(4.0)))
