"""AdaBin in a run: the recipes carry the published settings, the EDE schedule reaches the
binarizers per epoch, the metrics are logged, the two-step recipe carries the activations'
α/β and the Maxout slopes into step 2, and a trained model refuses to export."""

from __future__ import annotations

import pytest
import torch
from _helpers import events

from bnnkit.config import load_recipe
from bnnkit.export import ExportError, convert
from bnnkit.methods.adabin import METRIC_ALPHA_A, METRIC_BETA_A, METRIC_OFFSET, METRIC_T
from bnnkit.methods.irnet import ede_schedule
from bnnkit.runs import load_checkpoint, train
from bnnkit.runs.stages import model_from_checkpoint

DATA = {"name": "synthetic", "synthetic_shape": [3, 8, 8], "synthetic_classes": 4,
        "synthetic_train": 64, "synthetic_val": 32, "batch_size": 16}  # fmt: skip
BASE = {
    "data": DATA,
    "model": {"name": "resnet20", "variant": "adabin"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "decay_rule": "all"},
    "logging": {"log_every": 1, "progress": "off", "tensorboard": False},
}  # fmt: skip


def test_the_shipped_recipes_have_the_published_settings():
    cfg = load_recipe("cifar10/resnet20_adabin")
    (s,) = cfg.stages
    assert (cfg.model.name, cfg.model.options["variant"]) == ("resnet20", "adabin")
    assert (s.method.name, s.method.progressive, s.method.t_min, s.method.t_max) == ("adabin", True, 1e-3, 10.0)  # fmt: skip
    assert (s.optimizer.lr, s.optimizer.momentum, s.optimizer.weight_decay, s.optimizer.decay_rule) == (0.1, 0.9, 1e-4, "all")  # fmt: skip
    assert (s.training.epochs, cfg.data.batch_size, s.schedule.warmup_epochs) == (400, 128, 0)
    im = load_recipe("imagenet/resnet18_adabin")
    assert (im.stages[0].optimizer.weight_decay, im.stages[0].training.epochs) == (1e-5, 120)
    assert (im.data.batch_size, im.data.lighting, im.data.rrc_scale) == (256, 0.0, (0.08, 1.0))
    assert load_recipe("imagenet/resnet34_adabin").model.name == "resnet34"
    two = load_recipe("imagenet/reactnet_resnet18_adabin").stages
    assert [st.method.weights for st in two] == ["float", "binary"]


def test_the_schedule_and_the_metrics_reach_the_log(tmp_path):
    train({**BASE, "method": {"name": "adabin"}, "training": {"epochs": 2, "seed": 0}}, out=tmp_path / "run")  # fmt: skip
    ev = events(tmp_path / "run", "train")
    per_epoch = {e["epoch"]: e[f"method/{METRIC_T}"] for e in ev}
    assert per_epoch[0] == pytest.approx(ede_schedule(0, 2, 1e-3, 10.0)[0])  # 1e-3
    assert per_epoch[1] == pytest.approx(ede_schedule(1, 2, 1e-3, 10.0)[0])  # 0.1
    last = ev[-1]
    assert last[f"method/{METRIC_ALPHA_A}"] != pytest.approx(1.0, abs=1e-7)  # learned
    assert last[f"method/{METRIC_BETA_A}"] != 0.0
    assert 0.0 < last[f"method/{METRIC_OFFSET}"] < 1.0  # |β_w|/α_w of kaiming weights: small
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run")).eval()
    with pytest.raises(ExportError, match=r"'layers\.0\.conv1'.*AdaBin's binary sets"):
        convert(model)


def test_two_steps_carry_the_activation_parameters_and_maxout_slopes(tmp_path):
    cfg = {**BASE, "stages": [
        {"name": "step1", "method": {"name": "adabin", "weights": "float"}, "training": {"epochs": 1, "seed": 0}},
        {"name": "step2", "method": {"name": "adabin"}, "training": {"epochs": 1},
         "optimizer": {"name": "sgd", "lr": 1e-12, "momentum": 0.0, "weight_decay": 0.0}},
    ]}  # fmt: skip
    train(cfg, out=tmp_path / "run")
    step1 = load_checkpoint(tmp_path / "run" / "checkpoints" / "step1-best.pt").model  # 1 epoch
    step2 = load_checkpoint(tmp_path / "run").model
    keys = [k for k in step1 if k.endswith(("input_binarizer.alpha", "input_binarizer.beta", "pos_scale", "neg_scale"))]  # fmt: skip
    assert len(keys) == 2 * 18 + 2 * (1 + 18)  # 18 (α, β) pairs, 19 Maxout units
    assert not torch.equal(step1["layers.0.conv1.input_binarizer.alpha"], torch.tensor(1.0))
    for k in keys:  # step 2 trains at lr 1e-12: it must start from (and keep) step 1's values
        assert torch.allclose(step1[k], step2[k], rtol=0, atol=1e-8), k
    assert "layers.0.conv1.sign_history.negative" in step2
    assert "layers.0.conv1.sign_history.negative" not in step1  # W32A1: no weight signs
