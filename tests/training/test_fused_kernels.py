"""``training.fused_kernels``: the engine runs the binarizers' generated kernels in training
and evaluation, and a step with them equals the eager step up to float rounding."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import events

from bnnkit.binarize import kernels as K
from bnnkit.config import ConfigError
from bnnkit.methods import TrainState
from bnnkit.runs import train
from bnnkit.training import autocast_for, trainer_for

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CPU = torch.device("cpu")


def _recipe(method: str, fused: bool, amp: str = "none") -> dict:
    return {
        "model": {"name": "resnet20"},
        "method": {"name": method},
        "data": {"name": "synthetic", "synthetic_shape": [3, 32, 32], "synthetic_classes": 10},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "training": {"fused_kernels": fused, "amp": amp},
    }


def test_the_switch_is_validated():
    with pytest.raises(ConfigError, match="fused_kernels"):
        trainer_for({**_recipe("ste", False), "training": {"fused_kernels": "maybe"}})


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_the_forward_context_turns_the_kernels_on(amp):
    big = torch.zeros(K.MIN_FUSED_NUMEL)
    with autocast_for(amp, CPU, fused=True)():
        assert K.use_fused(big)
        assert torch.is_autocast_enabled("cpu") == (amp == "bf16")
    with autocast_for(amp, CPU)():
        assert not K.use_fused(big)


@pytest.mark.parametrize("method", ["ste", "reactnet", "recu", "irnet"])
def test_a_fused_step_equals_the_eager_step(method, monkeypatch):
    """Same initial weights and batch: after two steps the weights agree to float rounding
    (the fused path is really taken: the kernels are called with fused=True; the ReCU
    std-through-variance backward amplifies a last-bit difference most, to ~1e-5)."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    seen: list[bool] = []
    real = K.sign

    def spy(fused, t):
        seen.append(fused)
        return real(fused, t)

    monkeypatch.setattr(K, "sign", spy)
    params = {}
    for fused in (False, True):
        torch.manual_seed(1)
        t = trainer_for(_recipe(method, fused))
        for step in range(2):
            t.train_step(x, y, TrainState(step, 0, 1, step / 2, 0.05, step))
        params[fused] = [p.detach().clone() for p in t.model.parameters()]
    assert any(seen) and not all(seen)  # eager in the first trainer, fused in the second
    for a, b in zip(params[False], params[True], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


def _trains_and_evaluates(tmp_path, method: str, side: int, batch: int, **training) -> None:
    """A one-epoch run (two batches) of ``method`` with the given ``training:`` keys: finite
    losses and a top-1 that is a percentage."""
    cfg = {
        "data": {"name": "synthetic", "synthetic_shape": [3, side, side], "synthetic_classes": 4,
                 "synthetic_train": 2 * batch, "synthetic_val": batch, "batch_size": batch},
        "model": {"name": "resnet20"},
        "method": {"name": method},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "training": {"epochs": 1, "seed": 0, **training},
        "logging": {"log_every": 1, "progress": "off", "tensorboard": False},
    }  # fmt: skip
    result = train(cfg, out=tmp_path / "run")
    losses = [e["loss"] for e in events(tmp_path / "run", "train")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert 0.0 <= result.final_top1 <= 100.0


def test_a_run_with_fused_kernels_trains_and_evaluates(tmp_path):
    _trains_and_evaluates(tmp_path, "reactnet", 32, 32, fused_kernels=True, amp="bf16")


@pytest.mark.parametrize(
    "method", ["float", "ste", "irnet", "reactnet", "recu", "rebnn", "ovsw", "rbnn", "adabin"]
)
def test_channels_last_computes_the_same_model(method):
    """NHWC (``training.channels_last``, now on the CPU too) is the same arithmetic: in float64
    the outputs and every gradient equal the NCHW ones to 1e-9. (In fp32 they differ at the
    level of the convolutions' accumulation order, amplified through the network: up to a few
    % of a gradient at initialisation, as NCHW fp32 differs from float64.)"""
    import bnnkit

    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (8,))
    got = {}
    for cl in (False, True):
        torch.manual_seed(1)
        model = bnnkit.create_model("resnet20", num_classes=10)
        if method != "float":
            bnnkit.binarize_(model, method)
        model = model.double()
        if cl:
            model = model.to(memory_format=torch.channels_last)
        xb = x.contiguous(memory_format=torch.channels_last) if cl else x
        out = model(xb)
        torch.nn.functional.cross_entropy(out, y).backward()
        got[cl] = (out.detach(), [p.grad for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(got[True][0], got[False][0], rtol=1e-9, atol=1e-9)
    assert len(got[True][1]) == len(got[False][1]) > 0
    for a, b in zip(got[False][1], got[True][1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


def test_a_cpu_run_with_channels_last_trains(tmp_path):
    _trains_and_evaluates(tmp_path, "recu", 16, 16, channels_last=True)
