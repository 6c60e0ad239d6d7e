"""Conformance of every binarizer, generated from the registry (``list_binarizers()``), plus the
bnnkit binarizers that are built by methods rather than by name (RSign, ReCU's, IR-Net's).

What every binarizer promises (``bnnkit.binarize.Binarizer``):

* it is a ``Binarizer``, built with no arguments, and keeps the input's shape and dtype;
* its output takes two values per output channel of a weight (dim 0), ``±alpha_c``;
* the output's sign is the sign of :meth:`~Binarizer.sign_input` (sign(0) = +1): what the
  sign history and the trackers record is the sign the layer really uses;
* it has a surrogate gradient: finite, of the input's shape, not identically zero near 0;
* :meth:`~Binarizer.inference_shift` either states the eval-mode output as ``sign(x + b)``
  (checked here on random inputs) or raises ``NotImplementedError`` (export then refuses);
* its state survives ``state_dict`` / ``deepcopy`` (same output after a round trip).
"""

from __future__ import annotations

import copy

import pytest
import torch

from bnnkit.binarize import Binarizer, get_binarizer, list_binarizers
from bnnkit.methods.irnet import LibraPBSign
from bnnkit.methods.recu import ReCUSign
from bnnkit.nn import RSign

C = 6  # channels (dim 0 of a weight, dim 1 of an activation)
EXTRA = {  # bnnkit binarizers that methods build themselves (not registered by name)
    "rsign": lambda: RSign(C),
    "recu_sign": ReCUSign,
    "libra_pb_sign": LibraPBSign,
}
CASES = [*list_binarizers(), *EXTRA]


def build(name: str) -> torch.nn.Module:
    b = EXTRA[name]() if name in EXTRA else get_binarizer(name)
    with torch.no_grad():  # non-zero learnable shifts, so that shifts are really checked
        for p in b.parameters():
            p.copy_(torch.linspace(-0.3, 0.4, p.numel()).view_as(p))
    return b


def inputs(name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A (C, C, 3, 3) tensor (a weight, or an activation: per-channel input parameters act on
    dim 1) with exact zeros and values near and far from 0."""
    x = torch.randn(C, C, 3, 3, dtype=dtype) * 1.5
    x[0, 0, 0, 0] = 0.0
    x[1, 0, 0, 0] = -0.0
    return x


def sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def test_the_registry_is_covered():
    assert len(list_binarizers()) >= 7 and set(list_binarizers()) <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_is_a_binarizer_keeping_shape_and_dtype(name):
    b = build(name)
    assert isinstance(b, Binarizer)
    for dtype in (torch.float32, torch.float64):
        x = inputs(name, dtype)
        out = b.to(dtype)(x)
        assert out.shape == x.shape and out.dtype == dtype


@pytest.mark.parametrize("name", CASES)
def test_two_values_per_output_channel(name):
    b = build(name)
    out = b(inputs(name)).detach()
    if not b.two_valued:  # a real-valued weight transform (BiPer's stage-1 sine) says so
        assert out.abs().unique().numel() > C
        return
    if b.affine_output:  # c + d·sign(u): two values, one per sign of the sign input, not ±d
        x = inputs(name)
        out, u = b(x).detach(), b.sign_input(x)
        pos, neg = out[u >= 0].unique(), out[u < 0].unique()
        assert pos.numel() == 1 and neg.numel() == 1 and not torch.equal(pos, neg)
        assert not torch.isclose(pos.abs(), neg.abs())  # really affine at these parameters
        return
    for c in range(C):
        values = out[c].abs().unique()
        assert values.numel() == 1 and float(values) > 0, (c, values)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("training", [True, False])
def test_the_outputs_sign_is_the_sign_of_its_sign_input(name, training):
    b = build(name).train(training)
    x = inputs(name)
    out = b(x).detach()
    if b.affine_output:  # the sign input picks the member: one output value per sign
        u = b.sign_input(x)
        assert out[u >= 0].unique().numel() == 1 and out[u < 0].unique().numel() == 1
        return
    assert torch.equal(sign(out), sign(b.sign_input(x)))


@pytest.mark.parametrize("name", CASES)
def test_surrogate_gradient_is_finite_and_not_zero_near_zero(name):
    b = build(name).train()
    x = (torch.rand(C, C, 3, 3) * 0.2 - 0.1).requires_grad_(True)  # near 0: inside every window
    b(x).backward(torch.ones_like(x))
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CASES)
def test_inference_shift_states_the_eval_output_or_refuses(name):
    b = build(name).eval()
    try:
        shift = b.inference_shift()
    except NotImplementedError:
        return  # stated: not a shifted sign (export refuses it)
    x = torch.randn(5, C, 4, 4) * 1.5  # an activation: channels on dim 1
    x[0, 0, 0, 0] = 0.0
    z = x if shift is None else x + shift.view(1, -1, 1, 1)
    assert torch.equal(b(x).detach(), sign(z))


@pytest.mark.parametrize("name", CASES)
def test_state_survives_a_round_trip(name):
    b = build(name)
    x = inputs(name)
    fresh = EXTRA[name]() if name in EXTRA else get_binarizer(name)
    fresh.load_state_dict(b.state_dict())
    assert torch.equal(fresh(x), b(x))
    assert torch.equal(copy.deepcopy(b)(x), b(x))
