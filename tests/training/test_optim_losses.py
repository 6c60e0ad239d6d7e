"""Schedules against the papers' formulas, decay groups, losses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bnnkit
from bnnkit.config import OptimizerConfig, ScheduleConfig
from bnnkit.training.losses import TaskLoss, distribution_loss
from bnnkit.training.optim import build_optimizer, lr_at, param_groups


def test_recu_cifar_schedule_hand_values():
    # ReCU CIFAR: lr 0.1, 5 warm-up epochs at lr (e+1)/5, then lr(e) = 0.05 (1 + cos(pi (e-4)/596))
    cfg = ScheduleConfig(name="cosine", warmup_epochs=5, cosine_offset=1)
    assert [lr_at(cfg, 0.1, e, 600) for e in range(5)] == pytest.approx(
        [0.02, 0.04, 0.06, 0.08, 0.1]
    )
    for e in (5, 100, 300, 599):
        assert lr_at(cfg, 0.1, e, 600) == pytest.approx(
            0.05 * (1 + math.cos(math.pi * (e - 4) / 596))
        )


def test_ovsw_schedule_has_a_floor():
    # OvSW: 0.5 (1 + cos(pi (e - w) / (E - w))) lr0 + 1e-5
    cfg = ScheduleConfig(name="cosine", warmup_epochs=5, min_lr=1e-5)
    assert lr_at(cfg, 0.1, 5, 600) == pytest.approx(0.1 + 1e-5)
    assert lr_at(cfg, 0.1, 600, 600) == pytest.approx(1e-5)
    assert lr_at(cfg, 0.1, 302.5, 600) == pytest.approx(0.05 + 1e-5)


def test_linear_schedule_start_and_end_variants():
    start = ScheduleConfig(name="linear", step_at="start")  # ReActNet: epoch e at lr (1 - (e+1)/E)
    end = ScheduleConfig(name="linear", step_at="end")  # ReBNN: epoch e at lr (1 - e/E)
    assert lr_at(start, 1e-3, 0, 4) == pytest.approx(7.5e-4)
    assert lr_at(start, 1e-3, 3, 4) == 0.0  # the last epoch runs at lr 0
    assert lr_at(end, 1e-3, 0, 4) == pytest.approx(1e-3)
    assert lr_at(end, 1e-3, 3, 4) == pytest.approx(2.5e-4)


def test_step_and_constant_schedules():
    cfg = ScheduleConfig(name="step", milestones=(2, 4), gamma=0.1)
    assert [lr_at(cfg, 1.0, e, 6) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_at(ScheduleConfig(name="constant"), 0.3, 5, 6) == 0.3


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_decay_rules():
    model = bnnkit.binarize_(bnnkit.create_model("resnet18", num_classes=10), "xnor")
    method = bnnkit.get_method("xnor")
    for rule, decayed in [
        ("all", lambda n, p: True),
        ("no_1d", lambda n, p: p.ndim > 1),
        ("conv_fc_names", lambda n, p: "conv" in n or "fc" in n),
    ]:
        groups = param_groups(model, method, OptimizerConfig(weight_decay=1e-4, decay_rule=rule))
        wd = {n: g["weight_decay"] for g in groups for n in _names(model, g)}
        assert len(wd) == sum(1 for _ in model.parameters())
        for n, p in model.named_parameters():
            assert wd[n] == (1e-4 if decayed(n, p) else 0.0), (rule, n)
    # ReCU ImageNet: the stem, binary convs and fc are decayed; BN and the downsample are not
    groups = param_groups(
        model, method, OptimizerConfig(weight_decay=1e-4, decay_rule="conv_fc_names")
    )
    wd = {n: g["weight_decay"] for g in groups for n in _names(model, g)}
    assert wd["layer1.0.conv1.weight"] == 1e-4 and wd["fc.weight"] == 1e-4
    assert wd["layer2.0.shortcut.0.weight"] == 0.0 and wd["layer1.0.bn1.weight"] == 0.0


def test_method_groups_with_their_own_weight_decay_win():
    model = bnnkit.binarize_(bnnkit.create_model("reactnet_resnet18", num_classes=10), "reactnet")
    opt = build_optimizer(
        model,
        bnnkit.get_method("reactnet"),
        OptimizerConfig(name="adam", lr=1e-3, weight_decay=1e-5),
    )
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["no_decay"]["weight_decay"] == 0.0 and by_name["decay"]["weight_decay"] == 1e-5
    assert isinstance(opt, torch.optim.Adam)


def test_distribution_loss_hand_value():
    student = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    teacher = torch.tensor([[math.log(2.0), 0.0]])  # softmax = [2/3, 1/3]
    expected = -(2 / 3 * math.log(1 / 4) + 1 / 3 * math.log(3 / 4))
    assert distribution_loss(student, teacher).item() == pytest.approx(expected)
    # no gradient reaches the teacher
    t = teacher.clone().requires_grad_()
    distribution_loss(student.requires_grad_(), t).backward()
    assert t.grad is None and student.grad is not None


def test_task_loss_with_teacher_is_kd_only_and_keeps_teacher_in_eval():
    teacher = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    loss = TaskLoss(teacher=teacher)
    loss.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    out = torch.randn(5, 3)
    assert loss(out, y, x).item() == pytest.approx(distribution_loss(out, teacher(x)).item())
    ce = TaskLoss(label_smoothing=0.1)(out, y, x)
    assert ce.item() == pytest.approx(
        nn.functional.cross_entropy(out, y, label_smoothing=0.1).item()
    )
