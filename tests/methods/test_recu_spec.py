"""ReCU (Xu et al., ICCV 2021), per equation, against hand values and an independent float64
reimplementation written here from ``methods.md`` §2 (no code shared with ``bnnkit.methods.recu``).

Spec lines tested (methods.md §2, §8 traps 4-8):

* τ(e) = A·exp(e/E) + B, A = (τ_max − τ_min)/(e − 1), B = τ_min − A, e 0-based, per epoch.
* w0 = W − mean_c(W); w1 = w0 · 2√2 / sqrt(var_unbiased_c(w0) + 1e-5) (not detached).
* Q = −mean|w1| (whole layer) · ln(2 − 2τ), no gradient; w2 = clamp(w1, −Q, Q) with gradient
  1 on the *closed* interval; b_w = sign(w2), identity STE.
* inputs, training only: x / sqrt(var_{C,H,W}(x, unbiased) + 1e-5) per sample, not detached;
  ApproxSign max(0, 2 − 2|x̂|) on the normalised value.
* α: learnable, shape (C_out,), torch.rand init.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from _helpers import RefApproxSign, ref_sign
from torch import nn
from torch.nn import functional as F

import bnnkit
from bnnkit.methods import TrainState, binarize_, binary_layers, get_method
from bnnkit.methods.recu import recu_standardize, recu_tau, recu_threshold

DT = torch.float64
SQRT8 = 2.0 * math.sqrt(2.0)  # the fixed std 2√2 (Laplace b* = 2)
EPS = 1e-5


def ALL(module: nn.Module, name: str) -> bool:
    """filter_fn: binarize every layer."""
    return True


# -- an independent reference, written from the spec --------------------------------------------


def ref_ste_sign(x: torch.Tensor) -> torch.Tensor:
    """Forward sign, backward identity."""
    return (x - x.detach()) + ref_sign(x).detach()  # (x - x) is exactly 0: forward is exact


def ref_standardize(w: torch.Tensor, detach_stats: bool = False) -> torch.Tensor:
    dims = tuple(range(1, w.ndim))
    mean = w.mean(dim=dims, keepdim=True)
    if detach_stats:
        mean = mean.detach()
    w0 = w - mean
    var = w0.var(dim=dims, keepdim=True, unbiased=True)
    if detach_stats:
        var = var.detach()
    return w0 * SQRT8 / torch.sqrt(var + EPS)


def ref_weight_binarizer(w: torch.Tensor, tau: float, detach_stats: bool = False) -> torch.Tensor:
    w1 = ref_standardize(w, detach_stats)
    q = (-w1.abs().mean() * math.log(2.0 - 2.0 * tau)).detach()
    inside = (w1 >= -q) & (w1 <= q)  # closed interval
    w2 = torch.where(inside, w1, ref_sign(w1) * q)  # gradient reaches w1 only where inside
    return ref_ste_sign(w2)


def ref_input_binarizer(
    x: torch.Tensor, training: bool, bias: torch.Tensor | None = None, detach_std: bool = False
) -> torch.Tensor:
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    if training:
        dims = tuple(range(1, x.ndim))
        std = torch.sqrt(x.var(dim=dims, keepdim=True, unbiased=True) + EPS)
        x = x / (std.detach() if detach_std else std)
    return RefApproxSign.apply(x)


def np_tau(e: int, E: int, lo: float = 0.85, hi: float = 0.99) -> float:
    a = (hi - lo) / (np.e - 1.0)
    return float(a * np.exp(e / E) + lo - a)


# -- helpers ------------------------------------------------------------------------------------


def recu_model(w: torch.Tensor, padding: int = 1, **fields):
    """A one-layer Sequential in float64 with weight ``w`` (4-D conv or 2-D linear)."""
    if w.ndim == 4:
        cout, cin, k, _ = w.shape
        layer = bnnkit.nn.BinaryConv2d(cin, cout, k, padding=padding, bias=False)
    else:
        layer = bnnkit.nn.BinaryLinear(w.shape[1], w.shape[0], bias=False)
    model = nn.Sequential(layer).double()
    with torch.no_grad():
        layer.weight.copy_(w)
    method = get_method("recu", **fields)
    binarize_(model, method, filter_fn=ALL)
    return model, layer, method, binary_layers(model)


def set_tau(layer, tau: float) -> None:
    with torch.no_grad():
        layer.weight_binarizer.tau.fill_(tau)


# -- τ schedule ---------------------------------------------------------------------------------


def test_tau_schedule_hand_values():
    assert recu_tau(0, 600, 0.85, 0.99) == pytest.approx(0.85, abs=1e-12)
    assert recu_tau(0, 200, 0.85, 0.99) == pytest.approx(0.85, abs=1e-12)
    # A = 0.14 / (e - 1) = 0.0814773; last epoch: A * exp((E-1)/E) + 0.85 - A
    assert abs(recu_tau(599, 600, 0.85, 0.99) - 0.9896) < 5e-5
    assert abs(recu_tau(199, 200, 0.85, 0.99) - 0.9889) < 5e-5
    assert abs(recu_tau(255, 256, 0.85, 0.99) - 0.9891) < 5e-5
    assert isinstance(recu_tau(3, 10, 0.85, 0.99), float)


@pytest.mark.parametrize("epochs", [10, 200, 256, 600])
def test_tau_schedule_matches_formula_is_increasing_and_never_reaches_tau_max(epochs):
    taus = [recu_tau(e, epochs, 0.85, 0.99) for e in range(epochs)]
    for e, t in enumerate(taus):
        assert t == pytest.approx(np_tau(e, epochs), abs=1e-12)
    assert all(b > a for a, b in itertools.pairwise(taus))
    assert max(taus) < 0.99
    # Other bounds are honoured (not hard-coded 0.85 / 0.99).
    assert recu_tau(5, 10, 0.6, 0.9) == pytest.approx(np_tau(5, 10, 0.6, 0.9), abs=1e-12)


@pytest.mark.parametrize(
    ("tau", "multiplier"), [(0.85, 1.204), (0.9, 1.609), (0.95, 2.303), (0.99, 3.912)]
)
def test_threshold_reference_multipliers(tau, multiplier):
    # mean|w1| = (1 + 1 + 0.5 + 1.5) / 4 = 1, so Q = -ln(2 - 2 tau) itself.
    w1 = torch.tensor([[1.0, -1.0], [0.5, -1.5]], dtype=DT)
    q = recu_threshold(w1, torch.tensor(tau, dtype=DT))
    assert q.ndim == 0
    assert float(q) == pytest.approx(multiplier, abs=6e-4)
    assert float(q) == pytest.approx(-math.log(2 - 2 * tau), rel=1e-9)


# -- standardisation ------------------------------------------------------------------------------


def test_standardize_hand_values_and_std_two_sqrt_two():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 2.0, -2.0]], dtype=DT).view(2, 1, 2, 2)
    w1 = recu_standardize(w)
    # channel 0: mean 2.5, w0 = [-1.5, -0.5, 0.5, 1.5], unbiased var = 5/3
    # channel 1: mean 0,   w0 = [0, 0, 2, -2],          unbiased var = 8/3
    k0 = SQRT8 / math.sqrt(5.0 / 3.0 + 1e-5)
    k1 = SQRT8 / math.sqrt(8.0 / 3.0 + 1e-5)
    expected = torch.tensor(
        [[-1.5 * k0, -0.5 * k0, 0.5 * k0, 1.5 * k0], [0.0, 0.0, 2.0 * k1, -2.0 * k1]], dtype=DT
    ).view(2, 1, 2, 2)
    assert w1.shape == w.shape
    torch.testing.assert_close(w1, expected, rtol=1e-12, atol=1e-12)
    std = w1.flatten(1).std(dim=1, unbiased=True)
    torch.testing.assert_close(std, torch.full((2,), SQRT8, dtype=DT), rtol=1e-5, atol=0)


def test_standardize_is_differentiable_through_mean_and_variance():
    torch.manual_seed(1)
    w = torch.randn(3, 2, 3, 3, dtype=DT, requires_grad=True)
    g = torch.randn(3, 2, 3, 3, dtype=DT)
    (recu_standardize(w) * g).sum().backward()
    w_ref = w.detach().clone().requires_grad_(True)
    (ref_standardize(w_ref) * g).sum().backward()
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-10, atol=1e-12)
    # ... and that is not the detached-statistics gradient.
    w_det = w.detach().clone().requires_grad_(True)
    (ref_standardize(w_det, detach_stats=True) * g).sum().backward()
    assert not torch.allclose(w_ref.grad, w_det.grad, rtol=1e-3, atol=1e-6)


# -- threshold Q ----------------------------------------------------------------------------------


def test_threshold_is_one_layer_wide_scalar_and_detached():
    # Channel spreads differ: mean|w1| is 1 on channel 0 and 3 on channel 1; layer-wide 2.
    w1 = torch.tensor([[1.0, 1.0, -1.0, 1.0], [3.0, -3.0, 3.0, 3.0]], dtype=DT, requires_grad=True)
    q = recu_threshold(w1, torch.tensor(0.95, dtype=DT))
    assert q.ndim == 0 and not q.requires_grad
    assert float(q) == pytest.approx(2.0 * math.log(10.0), rel=1e-12)  # -2 ln(0.1)
    assert float(q) != pytest.approx(1.0 * math.log(10.0), rel=1e-3)  # not channel 0's
    assert float(q) != pytest.approx(3.0 * math.log(10.0), rel=1e-3)  # not channel 1's


# -- weight binarizer: forward and the clamp gradient ---------------------------------------------


def test_weight_binarizer_is_sign_of_centred_weight_and_alpha_scales_it():
    # All-positive channel: sign(W) would be all +1, ReCU binarizes the *centred* weight.
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-0.5, 0.1, 0.2, -0.6]], dtype=DT)
    _, layer, _, _ = recu_model(w)
    set_tau(layer, 0.85)
    b = layer.weight_binarizer(layer.weight)
    expected = torch.tensor([[-1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, 1.0, -1.0]], dtype=DT)
    assert torch.equal(b, expected)
    with torch.no_grad():
        layer.scale.alpha.copy_(torch.tensor([0.25, 0.75], dtype=DT))
    torch.testing.assert_close(
        layer.binarized_weight(), expected * torch.tensor([[0.25], [0.75]], dtype=DT)
    )


def test_weight_binarizer_maps_zero_to_plus_one():
    # A zero threshold (tau = 0.5) clamps every w1 to exactly 0 -> sign(0) = +1 everywhere.
    w = torch.tensor([[1.0, -2.0, 3.0, -4.0]], dtype=DT)
    _, layer, _, _ = recu_model(w)
    set_tau(layer, 0.5)
    assert torch.equal(layer.weight_binarizer(layer.weight), torch.ones(1, 4, dtype=DT))


# tau* = 1 - exp(-1)/2 in float64 gives ln(2 - 2 tau*) == -1.0 *exactly* (checked below with
# torch.log and math.log). With a single-channel layer W = [x, -x], w1 = [a, -a] exactly
# (sign-symmetric arithmetic), mean|w1| = a exactly, so Q = a: both weights sit exactly on ±Q.
TAU_STAR = 1.0 - math.exp(-1.0) / 2.0


def _boundary_grad(tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.tensor([[1e-3, -1e-3]], dtype=DT)
    _, layer, _, _ = recu_model(w)
    set_tau(layer, tau)
    g = torch.tensor([[1.0, 3.0]], dtype=DT)
    w_leaf = w.clone().requires_grad_(True)
    (layer.weight_binarizer(w_leaf) * g).sum().backward()
    w_ref = w.clone().requires_grad_(True)
    (ref_weight_binarizer(w_ref, tau) * g).sum().backward()
    return w_leaf.grad, w_ref.grad


def test_clamp_passes_gradient_at_exactly_plus_minus_q():
    # Preconditions of the construction (they make the boundary exact, not approximate).
    t = torch.tensor(TAU_STAR, dtype=DT)
    assert float(torch.log(2 - 2 * t)) == -1.0 and math.log(2 - 2 * TAU_STAR) == -1.0
    w1 = ref_standardize(torch.tensor([[1e-3, -1e-3]], dtype=DT))
    assert float(-w1.abs().mean() * torch.log(2 - 2 * t)) == float(w1[0, 0]) == -float(w1[0, 1])

    got, ref = _boundary_grad(TAU_STAR)
    assert ref.abs().min() > 1e-3  # the closed interval lets the gradient through ...
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-14)  # ... in bnnkit too


def test_clamp_blocks_gradient_just_outside_and_passes_just_inside():
    got_out, ref_out = _boundary_grad(TAU_STAR - 1e-6)  # Q slightly below |w1|: both clamped
    assert torch.equal(ref_out, torch.zeros_like(ref_out))
    assert torch.equal(got_out, torch.zeros_like(got_out))
    got_in, ref_in = _boundary_grad(TAU_STAR + 1e-6)  # Q slightly above |w1|: both inside
    assert ref_in.abs().min() > 1e-3
    torch.testing.assert_close(got_in, ref_in, rtol=1e-10, atol=1e-14)


# -- the core test: the whole layer against the float64 reference ----------------------------------


def _core(training: bool = True):
    torch.manual_seed(3)
    w = torch.distributions.Laplace(0.0, 1.0).sample((4, 3, 3, 3)).to(DT)
    model, layer, method, layers = recu_model(w)
    model.train(training)
    method.on_step_start(layers, TrainState(step=0, epoch=0, epochs=10))  # tau = 0.85
    alpha = torch.tensor([0.3, 0.9, 0.5, 0.1], dtype=DT)
    with torch.no_grad():
        layer.scale.alpha.copy_(alpha)
    x = torch.randn(2, 3, 5, 5, dtype=DT)
    r = torch.randn(2, 4, 5, 5, dtype=DT)

    x_got = x.clone().requires_grad_(True)
    out = model(x_got)
    (out * r).sum().backward()

    w_ref = w.clone().requires_grad_(True)
    a_ref = alpha.clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    w_hat = a_ref.view(-1, 1, 1, 1) * ref_weight_binarizer(w_ref, 0.85)
    out_ref = F.conv2d(ref_input_binarizer(x_ref, training), w_hat, padding=1)
    (out_ref * r).sum().backward()
    return layer, w, x, r, (out, x_got), (out_ref, w_ref, a_ref, x_ref)


def test_layer_matches_reference_in_forward_and_every_gradient():
    layer, _, _, _, (out, x_got), (out_ref, w_ref, a_ref, x_ref) = _core()
    assert float(layer.weight_binarizer.tau) == pytest.approx(0.85, abs=1e-12)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(layer.scale.alpha.grad, a_ref.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x_got.grad, x_ref.grad, rtol=1e-9, atol=1e-12)


def test_dead_weights_get_gradient_only_through_the_standardisation_statistics():
    layer, w, x, r, _, (_, w_ref, _, _) = _core()
    w1 = ref_standardize(w)
    q = -w1.abs().mean() * math.log(2 - 2 * 0.85)
    dead = w1.abs() > q
    assert 0 < int(dead.sum()) < dead.numel()  # tau = 0.85 clamps some, not all

    # Task path only (statistics detached): dead weights get exactly zero.
    w_det = w.clone().requires_grad_(True)
    x_b = ref_input_binarizer(x, True)
    w_hat = layer.scale.alpha.detach().view(-1, 1, 1, 1) * ref_weight_binarizer(w_det, 0.85, True)
    (F.conv2d(x_b, w_hat, padding=1) * r).sum().backward()
    assert torch.equal(w_det.grad[dead], torch.zeros_like(w_det.grad[dead]))

    # Full ReCU: the statistics term reaches the dead weights; bnnkit agrees with the reference.
    assert bool((w_ref.grad[dead].abs() > 1e-8).all())
    assert bool((layer.weight.grad[dead].abs() > 1e-8).all())
    torch.testing.assert_close(layer.weight.grad[dead], w_ref.grad[dead], rtol=1e-9, atol=1e-12)


# -- activation path --------------------------------------------------------------------------------


def _input_grads(model, layer, x, r):
    x_leaf = x.clone().requires_grad_(True)
    out = layer.binarized_input(x_leaf)
    (out * r).sum().backward()
    return out.detach(), x_leaf.grad


def test_activation_normalisation_in_training_is_not_detached():
    torch.manual_seed(4)
    model, layer, _, _ = recu_model(torch.randn(2, 3, 3, 3, dtype=DT))
    model.train()
    x = 0.7 * torch.randn(3, 3, 4, 4, dtype=DT)
    r = torch.randn(3, 3, 4, 4, dtype=DT)
    out, grad = _input_grads(model, layer, x, r)
    x_ref = x.clone().requires_grad_(True)
    out_ref = ref_input_binarizer(x_ref, training=True)
    (out_ref * r).sum().backward()
    assert torch.equal(out, ref_sign(x))  # a positive per-sample factor keeps the sign
    torch.testing.assert_close(grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    x_det = x.clone().requires_grad_(True)
    (ref_input_binarizer(x_det, training=True, detach_std=True) * r).sum().backward()
    assert not torch.allclose(x_ref.grad, x_det.grad, rtol=1e-3, atol=1e-6)  # discriminates


def test_activation_in_eval_mode_is_plain_approx_sign_of_x():
    torch.manual_seed(5)
    model, layer, _, _ = recu_model(torch.randn(2, 3, 3, 3, dtype=DT))
    model.eval()
    # Inputs with a std far from 1, so normalising would change the ApproxSign window.
    x = 0.2 * torch.randn(2, 3, 4, 4, dtype=DT)
    r = torch.randn(2, 3, 4, 4, dtype=DT)
    out, grad = _input_grads(model, layer, x, r)
    assert torch.equal(out, ref_sign(x))
    torch.testing.assert_close(grad, r * torch.clamp(2 - 2 * x.abs(), min=0), rtol=1e-12, atol=0)
    x_tr = x.clone().requires_grad_(True)
    (ref_input_binarizer(x_tr, training=True) * r).sum().backward()
    assert not torch.allclose(grad, x_tr.grad, rtol=1e-3, atol=1e-6)


def test_input_bias_is_added_before_the_normalisation():
    torch.manual_seed(6)
    model, layer, _, _ = recu_model(torch.randn(2, 3, 3, 3, dtype=DT), input_bias=True)
    model.train()
    bias = layer.input_binarizer.bias
    assert isinstance(bias, nn.Parameter) and bias.shape == (3,)
    assert torch.equal(bias.detach(), torch.zeros(3, dtype=DT))
    with torch.no_grad():
        bias.copy_(torch.tensor([0.3, -0.2, 0.1], dtype=DT))
    x = torch.randn(2, 3, 4, 4, dtype=DT)
    r = torch.randn(2, 3, 4, 4, dtype=DT)
    out, grad = _input_grads(model, layer, x, r)
    x_ref = x.clone().requires_grad_(True)
    b_ref = bias.detach().clone().requires_grad_(True)
    out_ref = ref_input_binarizer(x_ref, training=True, bias=b_ref)
    (out_ref * r).sum().backward()
    assert torch.equal(out, out_ref.detach())
    torch.testing.assert_close(grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bias.grad, b_ref.grad, rtol=1e-10, atol=1e-12)


def test_no_learnable_input_parameter_without_input_bias():
    _, layer, _, _ = recu_model(torch.randn(2, 3, 3, 3, dtype=DT))
    assert [p for p in layer.input_binarizer.parameters() if p.requires_grad] == []


def test_method_defaults():
    m = get_method("recu")
    assert (m.tau_min, m.tau_max, m.input_bias) == (0.85, 0.99, False)


# -- α ---------------------------------------------------------------------------------------------


def test_alpha_is_a_learnable_uniform_0_1_parameter_not_mean_abs():
    torch.manual_seed(7)
    w = 5.0 + torch.rand(512, 2, 3, 3, dtype=DT)  # mean|W| >= 5: cannot be mistaken for U[0, 1)
    model, layer, _, _ = recu_model(w)
    alpha = layer.scale.alpha
    assert isinstance(alpha, nn.Parameter) and alpha.requires_grad
    assert alpha.shape == (512,)
    assert any(p is alpha for p in model.parameters())
    a = alpha.detach()
    assert bool((a >= 0).all()) and bool((a < 1).all())
    assert float(a.min()) < 0.05 and float(a.max()) > 0.95
    assert 0.4 < float(a.mean()) < 0.6


# -- τ buffer and on_step_start ----------------------------------------------------------------------


def test_tau_buffer_is_saved_and_survives_a_state_dict_round_trip():
    model, layer, method, layers = recu_model(torch.randn(2, 3, 3, 3, dtype=DT))
    assert "weight_binarizer.tau" in layer.state_dict()
    assert layer.weight_binarizer.tau.ndim == 0 and layer.weight_binarizer.tau.is_floating_point()
    assert "weight_binarizer.tau" in dict(layer.named_buffers())
    method.on_step_start(layers, TrainState(step=500, epoch=150, epochs=200))
    sd = model.state_dict()
    assert float(sd["0.weight_binarizer.tau"]) == pytest.approx(np_tau(150, 200), abs=1e-12)

    fresh, fresh_layer, _, _ = recu_model(torch.randn(2, 3, 3, 3, dtype=DT))
    assert float(fresh_layer.weight_binarizer.tau) != pytest.approx(np_tau(150, 200), abs=1e-6)
    fresh.load_state_dict(sd)
    assert float(fresh_layer.weight_binarizer.tau) == pytest.approx(np_tau(150, 200), abs=1e-12)


def test_on_step_start_writes_the_per_epoch_tau_into_every_layer():
    l1 = bnnkit.nn.BinaryConv2d(2, 3, 3, bias=False)
    l2 = bnnkit.nn.BinaryLinear(4, 2, bias=False)
    model = nn.Sequential(l1, l2).double()
    method = get_method("recu", tau_min=0.8, tau_max=0.95)
    binarize_(model, method, filter_fn=ALL)
    layers = binary_layers(model)
    assert len(layers) == 2
    for epoch in (0, 3, 9):
        for step in (epoch * 7, epoch * 7 + 5):  # different steps of one epoch: same value
            method.on_step_start(
                layers, TrainState(step=step, epoch=epoch, epochs=10, progress=step / 70)
            )
            for _, layer in layers:
                got = float(layer.weight_binarizer.tau)
                assert got == pytest.approx(np_tau(epoch, 10, 0.8, 0.95), abs=1e-12)


def test_scale_module_returns_alpha_per_channel():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-0.5, 0.1, 0.2, -0.6]], dtype=DT)
    _, layer, _, _ = recu_model(w)
    with torch.no_grad():
        layer.scale.alpha.copy_(torch.tensor([0.25, 0.75], dtype=DT))
    s = layer.scale(layer.weight)
    torch.testing.assert_close(s.detach().reshape(2), torch.tensor([0.25, 0.75], dtype=DT))
    b = layer.weight_binarizer(layer.weight)
    torch.testing.assert_close(layer.binarized_weight(), s * b, rtol=1e-12, atol=0)
