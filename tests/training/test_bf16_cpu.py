"""``training.amp: bf16`` on the CPU: autocast for training and evaluation, the exactness of a
binary conv's ±1 x ±1 sums in bf16 (exact, then the output rounded to bf16), and runs of the
methods under it."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import events
from torch.nn import functional as F

import bnnkit
from bnnkit.nn import BinaryConv2d
from bnnkit.runs import train
from bnnkit.training import autocast_for

CPU = torch.device("cpu")


def test_bf16_autocasts_on_the_cpu_and_fp16_does_not():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with autocast_for("bf16", CPU)():
        assert conv(x).dtype == torch.bfloat16
    with autocast_for("fp16", CPU)():  # ignored on the CPU (the stage prints a note)
        assert conv(x).dtype == torch.float32
    with autocast_for("none", CPU)():
        assert conv(x).dtype == torch.float32


@pytest.mark.parametrize("cin, k", [(16, 3), (64, 3), (512, 3), (2048, 1)])
def test_a_binary_conv_in_bf16_is_the_exact_sum_rounded_to_bf16(cin, k):
    """K = cin·k² up to 4608 (3x3) and 2048 (1x1): the ±1 products and their fp32 sums are
    exact, so the bf16 output is the exact integer sum rounded to bf16, bit for bit. A sum of K
    ±1 products has K's parity, so with K even it is representable in bf16 (8 significant bits)
    up to 512; beyond that the output rounding is real."""
    torch.manual_seed(0)
    conv = BinaryConv2d(cin, 8, k, padding=k // 2, bias=False,
                        weight_binarizer="clipped_ste", input_binarizer="clipped_ste")  # fmt: skip
    x = torch.randn(2, cin, 6, 6) + 1.5  # mostly +1 x +1: sums near K, large enough to round
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight) + 1.5)
        exact = conv(x)  # fp32: integers, exact below 2^24
        with autocast_for("bf16", CPU)():
            got = conv(x)
    assert got.dtype == torch.bfloat16
    assert torch.equal(exact, exact.round()) and float(exact.abs().max()) <= cin * k * k
    assert torch.equal(got, exact.to(torch.bfloat16))
    if float(exact.abs().max()) > 512:  # sums beyond 512: the output rounding is visible
        assert not torch.equal(got.float(), exact)


def test_a_bf16_conv_of_pm1_matches_the_fp32_conv_of_the_same_operands():
    a = torch.where(torch.randn(2, 32, 5, 5) < 0, -1.0, 1.0)
    w = torch.where(torch.randn(16, 32, 3, 3) < 0, -1.0, 1.0)
    exact = F.conv2d(a, w, padding=1)
    assert torch.equal(F.conv2d(a.bfloat16(), w.bfloat16(), padding=1), exact.to(torch.bfloat16))


RECIPE = {
    "data": {"name": "synthetic", "synthetic_shape": [3, 8, 8], "synthetic_classes": 4,
             "synthetic_train": 32, "synthetic_val": 16, "batch_size": 16},
    "model": {"name": "resnet20"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "training": {"epochs": 1, "seed": 0, "amp": "bf16"},
    "logging": {"log_every": 1, "progress": "off", "tensorboard": False},
}  # fmt: skip


@pytest.mark.parametrize("method", ["float", "ste", "reactnet", "recu", "ovsw", "adabin", "rbnn"])
def test_a_run_trains_and_evaluates_under_bf16_on_the_cpu(method, tmp_path, capsys):
    cfg = {**RECIPE, "method": {"name": method}}
    result = train(cfg, out=tmp_path / "run")
    assert "amp=bf16 ignored" not in capsys.readouterr().err
    losses = [e["loss"] for e in events(tmp_path / "run", "train")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert 0.0 <= result.final_top1 <= 100.0
    model = bnnkit.create_model("resnet20", num_classes=4)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
