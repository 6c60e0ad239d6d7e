"""OvSW (Xiang et al., ECCV 2024), per equation, against hand values and an independent numpy /
torch reference written here from ``methods.md`` §4 (no code shared with ``bnnkit.methods.ovsw``).

Spec lines tested (methods.md §4.1-4.3, §8 traps 7-10):

* weights: b_w = sign(raw W), identity STE; scale s_c = mean|(W − mean_c)/sqrt(var_c + 1e-5)|,
  no gradient (or, with learnable_scale, a Parameter initialised to mean|W_c|).
* inputs: training x / sqrt(var_{C,H,W}(x, unbiased) + 1e-5) per sample, *detached*; ApproxSign
  on the normalised value; eval: plain sign(x).
* AGS per output channel: r = max(‖g‖, 1e-6) / max(‖w‖, 1e-3); if r < δ: g ← g·δ‖w‖/‖g‖
  (clamped norms); otherwise unchanged.
* SAD, right after AGS: tracker ← m·tracker + (1 − m)·1[sign W ≠ sign W_prev];
  silent = tracker < θ; g ← g + λ·silent·W; W_prev ← W (pre-step).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import RefApproxSign
from torch import nn

import bnnkit
from bnnkit.methods import TrainState, binarize_, binary_layers, get_method
from bnnkit.nn import update_sign_history

DT = torch.float64
EPS = 1e-5
DELTA, LAM, M, THETA = 0.01, 2e-5, 0.999, 1e-4


def ALL(module: nn.Module, name: str) -> bool:
    """filter_fn: binarize every layer."""
    return True


def t(a) -> torch.Tensor:
    """A float64 tensor that owns a *copy* of ``a`` (hooks edit grads in place)."""
    return torch.tensor(np.array(a, dtype=np.float64), dtype=DT)


def sgn(a: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(a) >= 0, 1.0, -1.0)


# -- independent reference ----------------------------------------------------------------------


def ref_ags(g, w, delta=DELTA) -> tuple[np.ndarray, np.ndarray]:
    """AGS per output channel; returns (new grad, r per channel before scaling)."""
    g = np.array(g, dtype=np.float64).reshape(len(g), -1)
    w = np.asarray(w, dtype=np.float64).reshape(len(w), -1)
    gn = np.maximum(np.linalg.norm(g, axis=1), 1e-6)
    wn = np.maximum(np.linalg.norm(w, axis=1), 1e-3)
    r = gn / wn
    factor = np.where(r < delta, delta * wn / gn, 1.0)
    return g * factor[:, None], r


def ref_sad(g, w, w_prev, tracker, m=M, theta=THETA, lam=LAM):
    """SAD; returns (new grad, new tracker, silent mask)."""
    flipped = (sgn(w) != sgn(w_prev)).astype(np.float64)
    tracker = m * np.asarray(tracker) + (1 - m) * flipped
    silent = tracker < theta
    return np.asarray(g) + lam * silent * np.asarray(w), tracker, silent


def ref_scale(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64).reshape(len(w), -1)
    centred = w - w.mean(1, keepdims=True)
    std = np.sqrt(centred.var(1, ddof=1, keepdims=True) + EPS)
    return np.abs(centred / std).mean(1)


def ref_input(x: torch.Tensor, training: bool, detach_std: bool = True) -> torch.Tensor:
    if training:
        dims = tuple(range(1, x.ndim))
        std = torch.sqrt(x.var(dim=dims, keepdim=True, unbiased=True) + EPS)
        x = x / (std.detach() if detach_std else std)
    return RefApproxSign.apply(x)


# -- harness --------------------------------------------------------------------------------------


def ovsw_model(w, **fields):
    w = t(w)
    if w.ndim == 4:
        cout, cin, k, _ = w.shape
        layer = bnnkit.nn.BinaryConv2d(cin, cout, k, padding=1, bias=False)
    else:
        layer = bnnkit.nn.BinaryLinear(w.shape[1], w.shape[0], bias=False)
    model = nn.Sequential(layer).double()
    with torch.no_grad():
        layer.weight.copy_(w)
    method = get_method("ovsw", **fields)
    binarize_(model, method, filter_fn=ALL)
    return model, layer, method, binary_layers(model)


def rules(layer, method, layers, grad, step: int = 0, w_next=None):
    """Set .grad by hand, run before_optimizer_step, simulate the step, run after.

    Returns (the gradient the optimizer would see, the metrics).
    """
    state = TrainState(step=step, epoch=0, epochs=1, progress=0.0, lr=0.1)
    layer.weight.grad = t(grad).reshape(layer.weight.shape).clone()
    method.before_optimizer_step(layers, state)
    seen = layer.weight.grad.detach().clone()
    if w_next is not None:
        with torch.no_grad():
            layer.weight.copy_(t(w_next).reshape(layer.weight.shape))
    update_sign_history(layers)  # the engine's step: right after optimizer.step
    metrics = method.after_optimizer_step(layers, state)
    return seen, metrics


def np_tau(e: int, E: int, lo: float = 0.85, hi: float = 0.99) -> float:
    a = (hi - lo) / (math.e - 1.0)
    return a * math.exp(e / E) + lo - a


# -- forward: weights, scale, inputs -------------------------------------------------------------


def test_defaults():
    m = get_method("ovsw")
    assert (m.delta, m.lam, m.m, m.theta) == (DELTA, LAM, M, THETA)
    assert (m.learnable_scale, m.input_bias, m.parts()) == (False, False, (m,))


def test_weight_is_scale_times_sign_of_raw_weight_with_no_gradient_through_the_scale():
    w = np.array([[1.0, 2.0, 3.0, 4.0], [-0.5, 0.1, 0.2, -0.6]])
    _, layer, _, _ = ovsw_model(w)
    s = ref_scale(w)
    # channel 0 by hand: centred [-1.5, -0.5, 0.5, 1.5], unbiased var 5/3 -> s = 1 / sqrt(5/3 + eps)
    assert s[0] == pytest.approx(1.0 / math.sqrt(5.0 / 3.0 + EPS), rel=1e-12)
    bw = layer.binarized_weight()
    expected = s[:, None] * sgn(w)  # raw sign: channel 0 is all +1 (not centred)
    torch.testing.assert_close(bw, t(expected), rtol=1e-12, atol=0)
    assert [p for p in layer.scale.parameters() if p.requires_grad] == []
    g = np.array([[1.0, -2.0, 0.5, 3.0], [0.3, 0.2, -1.0, 0.7]])
    (bw * t(g)).sum().backward()
    # identity STE, scale a constant: dL/dW = s_c * G (no term through s)
    torch.testing.assert_close(layer.weight.grad, t(s[:, None] * g), rtol=1e-12, atol=0)


def test_scale_module_returns_the_per_channel_scale():
    # bnnkit.binarize.Scale: forward(W) -> s broadcastable to W (what export folds)
    w = np.array([[1.0, 2.0, 3.0, 4.0], [-0.5, 0.1, 0.2, -0.6]])
    _, layer, _, _ = ovsw_model(w)
    s = layer.scale(layer.weight)
    assert not s.requires_grad
    torch.testing.assert_close(s.reshape(2), t(ref_scale(w)), rtol=1e-12, atol=0)
    torch.testing.assert_close(layer.binarized_weight().detach(), s * t(sgn(w)), rtol=1e-12, atol=0)


def test_learnable_scale_is_a_parameter_initialised_to_mean_abs_w():
    w = np.array([[1.0, 2.0, 3.0, 4.0], [-0.5, 0.1, 0.2, -0.6]])
    _, layer, _, _ = ovsw_model(w, learnable_scale=True)
    alpha = layer.scale.alpha
    assert isinstance(alpha, nn.Parameter) and alpha.shape == (2,)
    torch.testing.assert_close(alpha.detach(), t([2.5, 0.35]), rtol=1e-12, atol=0)
    bw = layer.binarized_weight()
    torch.testing.assert_close(bw, t(np.array([[2.5], [0.35]]) * sgn(w)), rtol=1e-12, atol=0)
    g = np.array([[1.0, -2.0, 0.5, 3.0], [0.3, 0.2, -1.0, 0.7]])
    (bw * t(g)).sum().backward()
    torch.testing.assert_close(alpha.grad, t((g * sgn(w)).sum(1)), rtol=1e-12, atol=1e-15)


def _input_grad(layer, x, r):
    x_leaf = x.clone().requires_grad_(True)
    out = layer.binarized_input(x_leaf)
    (out * r).sum().backward()
    return out.detach(), x_leaf.grad


def test_input_normalisation_in_training_uses_a_detached_std():
    torch.manual_seed(1)
    model, layer, _, _ = ovsw_model(np.random.default_rng(0).normal(size=(2, 3, 3, 3)))
    model.train()
    x = 0.7 * torch.randn(3, 3, 4, 4, dtype=DT)
    r = torch.randn(3, 3, 4, 4, dtype=DT)
    out, grad = _input_grad(layer, x, r)
    assert torch.equal(out, torch.where(x >= 0, 1.0, -1.0).to(DT))
    x_ref = x.clone().requires_grad_(True)
    (ref_input(x_ref, True) * r).sum().backward()
    torch.testing.assert_close(grad, x_ref.grad, rtol=1e-10, atol=1e-13)
    x_nd = x.clone().requires_grad_(True)
    (ref_input(x_nd, True, detach_std=False) * r).sum().backward()
    assert not torch.allclose(x_ref.grad, x_nd.grad, rtol=1e-3, atol=1e-6)  # discriminates


def test_eval_mode_skips_the_normalisation():
    torch.manual_seed(2)
    model, layer, _, _ = ovsw_model(np.random.default_rng(1).normal(size=(2, 3, 3, 3)))
    model.eval()
    x = 0.2 * torch.randn(2, 3, 4, 4, dtype=DT)  # std far from 1: normalising would matter
    r = torch.randn(2, 3, 4, 4, dtype=DT)
    out, grad = _input_grad(layer, x, r)
    assert torch.equal(out, torch.where(x >= 0, 1.0, -1.0).to(DT))
    torch.testing.assert_close(grad, r * torch.clamp(2 - 2 * x.abs(), min=0), rtol=1e-12, atol=0)
    x_tr = x.clone().requires_grad_(True)
    (ref_input(x_tr, True) * r).sum().backward()
    assert not torch.allclose(grad, x_tr.grad, rtol=1e-3, atol=1e-6)


def test_input_bias_is_added_before_the_detached_normalisation():
    # Reading: OvSW's input_bias is ReCU's (a (C_in,) Parameter, init 0, added to x before the
    # per-sample normalisation), with OvSW's detached std.
    torch.manual_seed(3)
    model, layer, _, _ = ovsw_model(
        np.random.default_rng(2).normal(size=(2, 3, 3, 3)), input_bias=True
    )
    model.train()
    bias = layer.input_binarizer.bias
    assert isinstance(bias, nn.Parameter) and bias.shape == (3,)
    assert torch.equal(bias.detach(), torch.zeros(3, dtype=DT))
    with torch.no_grad():
        bias.copy_(t([0.3, -0.2, 0.1]))
    x = torch.randn(2, 3, 4, 4, dtype=DT)
    r = torch.randn(2, 3, 4, 4, dtype=DT)
    out, grad = _input_grad(layer, x, r)
    x_ref = x.clone().requires_grad_(True)
    b_ref = bias.detach().clone().requires_grad_(True)
    out_ref = ref_input(x_ref + b_ref.view(1, -1, 1, 1), True)
    (out_ref * r).sum().backward()
    assert torch.equal(out, out_ref.detach())
    torch.testing.assert_close(grad, x_ref.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(bias.grad, b_ref.grad, rtol=1e-10, atol=1e-13)


def test_no_learnable_input_parameter_without_input_bias():
    _, layer, _, _ = ovsw_model(W0)
    assert [p for p in layer.input_binarizer.parameters() if p.requires_grad] == []


# -- buffers -----------------------------------------------------------------------------------------


def test_buffers_start_as_the_signs_of_w_and_zeros():
    # W_prev is the layer's sign history: the signs of W0, no flip; the tracker starts at 0
    w = np.array([[0.5, -0.2, 0.3, -0.4], [0.1, 0.2, -0.3, 0.6]])
    _, layer, _, _ = ovsw_model(w)
    st, history = layer.method_state["ovsw"], layer.sign_history
    assert torch.equal(history.negative, t(w) < 0) and not history.flipped.any()
    assert torch.equal(st.tracker, torch.zeros(2, 4, dtype=DT))
    names = dict(layer.named_buffers())
    assert "sign_history.negative" in names and "method_state.ovsw.tracker" in names
    with torch.no_grad():
        layer.weight.mul_(-1.0)  # an in-place optimizer step must not move the record
    assert torch.equal(history.negative, t(w) < 0)


# -- AGS --------------------------------------------------------------------------------------------


def test_ags_by_hand_one_channel_below_delta_one_above():
    w = np.array([[3.0, 4.0, 0.0, 0.0], [1.0, -2.0, 2.0, 0.0]])  # ||w|| = 5 and 3
    g = np.array([[0.01, 0.0, 0.0, 0.0], [0.3, 0.0, 0.4, 0.0]])  # ||g|| = 0.01 and 0.5
    _, layer, method, layers = ovsw_model(w)
    seen, metrics = rules(layer, method, layers, g)
    # channel 0: r = 0.002 < 0.01 -> g * (0.01 * 5 / 0.01) = [0.05, 0, 0, 0], norm delta*||w||
    # channel 1: r = 1/6 >= 0.01 -> unchanged. Then SAD: every weight is silent at step 0 -> + lam W
    expected = np.array([[0.05, 0.0, 0.0, 0.0], [0.3, 0.0, 0.4, 0.0]]) + LAM * w
    torch.testing.assert_close(seen, t(expected), rtol=1e-12, atol=1e-15)
    assert float(metrics["ovsw/ags_ratio"]) == pytest.approx((0.002 + 0.5 / 3) / 2, rel=1e-10)
    assert metrics["ovsw/ags_ratio"].ndim == 0


def test_ags_norm_clamps():
    w = np.array(
        [
            [0.5, -0.5, 0.5, -0.5],  # ||w|| = 1, zero gradient
            [1e-5, -1e-5, 1e-5, -1e-5],  # ||w|| = 2e-5 -> clamped to 1e-3
            [0.6, 0.8, 0.0, 0.0],  # ||w|| = 1, ||g|| = 1e-8 -> clamped to 1e-6
        ]
    )
    g = np.array([[0.0, 0.0, 0.0, 0.0], [2e-6, 0.0, 0.0, 0.0], [1e-8, 0.0, 0.0, 0.0]])
    _, layer, method, layers = ovsw_model(w)
    seen, metrics = rules(layer, method, layers, g)
    ags = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],  # 0 * finite factor: stays 0 (0/0 without the clamp -> NaN)
            [
                1e-5,
                0.0,
                0.0,
                0.0,
            ],  # r = 2e-6/1e-3 < delta: x 0.01*1e-3/2e-6 = 5 (unclamped: r = 0.1)
            [1e-4, 0.0, 0.0, 0.0],  # r = 1e-6 < delta: x 0.01*1/1e-6 = 1e4 (unclamped: x 1e6)
        ]
    )
    assert bool(torch.isfinite(seen).all())
    torch.testing.assert_close(seen, t(ags + LAM * w), rtol=1e-10, atol=1e-18)
    expected_r = (1e-6 / 1.0 + 2e-6 / 1e-3 + 1e-6 / 1.0) / 3
    assert float(metrics["ovsw/ags_ratio"]) == pytest.approx(expected_r, rel=1e-9)


def test_ags_never_scales_down():
    w = np.array([[0.1, 0.1, 0.1, 0.1], [1.0, 1.0, 1.0, 1.0]])
    g = np.array([[5.0, -3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.1]])  # r = sqrt(39)/0.2 and 0.05
    _, layer, method, layers = ovsw_model(w)
    seen, _ = rules(layer, method, layers, g)
    torch.testing.assert_close(seen, t(g + LAM * w), rtol=1e-12, atol=1e-15)


def test_ags_runs_before_sad():
    # SAD's +lam*W would raise ||g|| of channel 0 before AGS sees it if the order were swapped.
    w = np.array([[3.0, 4.0, 0.0, 0.0], [1.0, -2.0, 2.0, 0.0]])
    g = np.array([[1e-5, 0.0, 0.0, 0.0], [0.3, 0.0, 0.4, 0.0]])
    tracker = np.zeros((2, 4))
    ags_first = ref_sad(ref_ags(g, w)[0], w, w, tracker)[0]
    sad_first = ref_ags(ref_sad(g, w, w, tracker)[0], w)[0]
    # by hand: AGS first -> [0.05 + 6e-5, 8e-5, 0, 0]; SAD first -> [7e-5, 8e-5] scaled to 0.05
    np.testing.assert_allclose(ags_first[0], [0.05 + 6e-5, 8e-5, 0.0, 0.0], rtol=1e-12)
    s = 0.05 / math.hypot(7e-5, 8e-5)
    np.testing.assert_allclose(sad_first[0], [7e-5 * s, 8e-5 * s, 0.0, 0.0], rtol=1e-12)
    assert not np.allclose(ags_first, sad_first, rtol=1e-3)
    _, layer, method, layers = ovsw_model(w)
    seen, _ = rules(layer, method, layers, g)
    torch.testing.assert_close(seen, t(ags_first), rtol=1e-12, atol=1e-15)


def test_rules_are_a_pure_function_of_the_current_unscaled_grad():
    """AMP: the engine unscales before the hook; the hook must only read ``.grad``.

    (a) a grad that was scaled by 1024 and unscaled in place (as GradScaler.unscale_ does, by
    multiplying with 1/1024) gives bit-for-bit the result of the plain grad; (b) the rules are not
    scale-invariant (AGS's threshold and SAD's lam*W), so feeding the still-scaled grad would be
    wrong: which is why they must run after unscale.
    """
    w = np.array([[3.0, 4.0, 0.0, 0.0], [1.0, -2.0, 2.0, 0.0]])
    g = np.array([[0.01, 0.0, 0.0, 0.0], [0.3, 0.0, 0.4, 0.0]])
    _, la, ma, lsa = ovsw_model(w)
    plain, _ = rules(la, ma, lsa, g)

    _, lb, mb, lsb = ovsw_model(w)
    state = TrainState(step=0, epoch=0, epochs=1)
    lb.weight.grad = t(g) * 1024.0
    lb.weight.grad.mul_(1.0 / 1024.0)
    mb.before_optimizer_step(lsb, state)
    assert torch.equal(lb.weight.grad, plain)

    _, lc, mc, lsc = ovsw_model(w)
    scaled, _ = rules(lc, mc, lsc, g * 1024.0)
    assert not torch.allclose(scaled / 1024.0, plain, rtol=1e-3, atol=0)


# -- SAD -------------------------------------------------------------------------------------------


W0 = np.array([[0.5, -0.2, 0.3, -0.4], [0.1, 0.2, -0.3, 0.6]])
W1 = np.array([[0.45, 0.15, 0.3, -0.4], [0.1, 0.2, -0.3, 0.6]])  # (0, 1) flips
W2 = W1.copy()  # no flip
W3 = np.array([[0.45, 0.15, 0.3, -0.4], [0.1, 0.2, 0.25, 0.6]])  # (1, 2) flips
GS = np.full((2, 4), 0.5)  # ||g_c|| = 1 >> delta ||w_c||: AGS leaves it alone


def test_sad_tracker_silent_mask_decay_and_w_prev_over_steps():
    _, layer, method, layers = ovsw_model(W0)
    st = layer.method_state["ovsw"]
    expected_tracker = [np.zeros((2, 4)) for _ in range(4)]
    expected_tracker[1][0, 1] = 0.001
    expected_tracker[2][0, 1] = 0.000999
    expected_tracker[3][0, 1] = 0.000998001
    expected_tracker[3][1, 2] = 0.001
    ws = [W0, W1, W2, W3]
    fractions = [1.0, 7 / 8, 7 / 8, 6 / 8]
    for k in range(4):
        w_next = ws[k + 1] if k + 1 < 4 else None  # the simulated optimizer step
        seen, metrics = rules(layer, method, layers, GS, step=k, w_next=w_next)
        # expected_tracker[k] is after step k's before hook; step k compares W_k with W_{k-1}
        tracker = expected_tracker[k]
        torch.testing.assert_close(st.tracker, t(tracker), rtol=1e-9, atol=1e-15)
        silent = tracker < THETA
        torch.testing.assert_close(seen, t(GS + LAM * silent * ws[k]), rtol=1e-12, atol=1e-15)
        # the next SAD compares W_{k+1} with this step's pre-step weights W_k (not W_{k+1})
        w_after = ws[k + 1] if k + 1 < 4 else ws[k]
        assert torch.equal(layer.sign_history.flipped, t(sgn(w_after) != sgn(ws[k])))
        assert float(metrics["ovsw/silent"]) == pytest.approx(fractions[k], abs=1e-12)
        assert metrics["ovsw/silent"].ndim == 0
    # the decayed value itself: 0.999^2 * 0.001
    assert float(st.tracker[0, 1]) == pytest.approx(0.999**2 * 0.001, rel=1e-9)


def test_sad_theta_controls_the_silent_mask():
    # theta = 2e-3 > 0.001: a weight that flipped once is still silent and still decayed.
    _, layer, method, layers = ovsw_model(W0, theta=2e-3)
    rules(layer, method, layers, GS, step=0, w_next=W1)
    seen, metrics = rules(layer, method, layers, GS, step=1)
    assert float(layer.method_state["ovsw"].tracker[0, 1]) == pytest.approx(0.001, rel=1e-9)
    torch.testing.assert_close(seen, t(GS + LAM * W1), rtol=1e-12, atol=1e-15)
    assert float(metrics["ovsw/silent"]) == pytest.approx(1.0, abs=1e-12)


def test_sad_silent_is_strictly_below_theta():
    # theta = 1 - m exactly: one flip puts the tracker *at* theta, which is not silent (<).
    _, layer, method, layers = ovsw_model(W0, theta=1.0 - M)
    rules(layer, method, layers, GS, step=0, w_next=W1)
    seen, _ = rules(layer, method, layers, GS, step=1)
    assert float(layer.method_state["ovsw"].tracker[0, 1]) == 1.0 - M
    silent = np.ones((2, 4), dtype=bool)
    silent[0, 1] = False
    torch.testing.assert_close(seen, t(GS + LAM * silent * W1), rtol=1e-12, atol=1e-15)


def test_sad_lam_scales_the_extra_decay():
    _, layer, method, layers = ovsw_model(W0, lam=1e-3)
    seen, _ = rules(layer, method, layers, GS)
    torch.testing.assert_close(seen, t(GS + 1e-3 * W0), rtol=1e-12, atol=1e-15)


# -- base = recu -------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["recu", {"name": "recu"}])
def test_recu_base_uses_recu_binarizers_and_schedule_with_ovsw_rules(base):
    w = np.array([[1.0, 2.0, 3.0, 4.0], [-0.5, 0.1, 0.2, -0.6]])
    _, layer, method, layers = ovsw_model(w, base=base)
    assert "weight_binarizer.tau" in layer.state_dict()
    method.on_step_start(layers, TrainState(step=30, epoch=3, epochs=10))
    assert float(layer.weight_binarizer.tau) == pytest.approx(np_tau(3, 10), abs=1e-12)
    # ReCU binarizes the centred weight: channel 0 gives [-1, -1, 1, 1], not sign(W) = +1
    b = layer.weight_binarizer(layer.weight)
    assert torch.equal(b[0], t([-1.0, -1.0, 1.0, 1.0]))
    assert isinstance(layer.scale.alpha, nn.Parameter)  # ReCU's learnable alpha
    # the OvSW gradient rules still apply
    g = np.array([[0.01, 0.0, 0.0, 0.0], [0.3, 0.0, 0.4, 0.0]])
    st = layer.method_state["ovsw"]
    assert not layer.sign_history.flipped.any()
    assert torch.equal(st.tracker, torch.zeros(2, 4, dtype=DT))
    seen, metrics = rules(layer, method, layers, g)
    expected = ref_sad(ref_ags(g, w)[0], w, w, np.zeros((2, 4)))[0]
    torch.testing.assert_close(seen, t(expected), rtol=1e-12, atol=1e-15)
    assert {"ovsw/silent", "ovsw/ags_ratio"} <= set(metrics)


def test_recu_base_given_as_a_dict_passes_its_fields():
    _, layer, method, layers = ovsw_model(W0, base={"name": "recu", "tau_min": 0.8})
    method.on_step_start(layers, TrainState(step=0, epoch=0, epochs=10))
    assert float(layer.weight_binarizer.tau) == pytest.approx(0.8, abs=1e-12)


# -- state -------------------------------------------------------------------------------------------


def test_weight_prev_and_tracker_survive_a_state_dict_round_trip():
    model, layer, method, layers = ovsw_model(W0)
    rules(layer, method, layers, GS, step=0, w_next=W1)
    rules(layer, method, layers, GS, step=1, w_next=W3)
    sd = model.state_dict()
    assert "0.sign_history.flipped" in sd and "0.method_state.ovsw.tracker" in sd
    fresh, fresh_layer, _, _ = ovsw_model(-W0)
    fresh.load_state_dict(sd)
    # what the next SAD compares: sign(W3) against the previous step's weights W1
    assert torch.equal(fresh_layer.sign_history.flipped, t(sgn(W3) != sgn(W1)))
    expected = np.zeros((2, 4))
    expected[0, 1] = 0.001
    torch.testing.assert_close(
        fresh_layer.method_state["ovsw"].tracker, t(expected), rtol=1e-9, atol=0
    )
    assert torch.equal(fresh_layer.weight.detach(), t(W3))


# -- conv layers and several layers ---------------------------------------------------------------


def test_conv_ags_and_sad_per_output_channel_over_cin_k_k():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(4, 2, 3, 3))
    g = rng.normal(size=(4, 2, 3, 3)) * np.array([1e-3, 1.0, 1e-4, 0.5])[:, None, None, None]
    _, layer, method, layers = ovsw_model(w)
    seen, metrics = rules(layer, method, layers, g)
    ags, r = ref_ags(g, w)
    assert (r < DELTA).sum() == 2  # channels 0 and 2 are rescaled, 1 and 3 are not
    expected = ags.reshape(w.shape) + LAM * w
    torch.testing.assert_close(seen, t(expected), rtol=1e-12, atol=1e-15)
    assert float(metrics["ovsw/ags_ratio"]) == pytest.approx(r.mean(), rel=1e-10)


def test_metrics_pool_weights_and_channels_over_all_layers():
    # Layer 1: 2 x 4 weights, one flip; layer 2: 3 x 2 weights, no flip.
    l1 = bnnkit.nn.BinaryLinear(4, 2, bias=False)
    l2 = bnnkit.nn.BinaryLinear(2, 3, bias=False)
    model = nn.Sequential(l1, l2).double()
    w2 = np.array([[1.0, -1.0], [0.5, 0.5], [-2.0, 1.0]])
    with torch.no_grad():
        l1.weight.copy_(t(W0))
        l2.weight.copy_(t(w2))
    method = get_method("ovsw")
    binarize_(model, method, filter_fn=ALL)
    layers = binary_layers(model)
    g2 = np.array([[0.001, 0.0], [1.0, 0.0], [0.0, 0.3]])
    for step, w_now in enumerate([W0, W1]):
        state = TrainState(step=step, epoch=0, epochs=1)
        with torch.no_grad():
            l1.weight.copy_(t(w_now))
        update_sign_history(layers)  # the (simulated) optimizer step that gave w_now
        l1.weight.grad, l2.weight.grad = t(GS), t(g2)
        method.before_optimizer_step(layers, state)
        metrics = method.after_optimizer_step(layers, state)
    # step 1: one of the 8 + 6 = 14 weights is non-silent (pooled), not mean(7/8, 1)
    assert float(metrics["ovsw/silent"]) == pytest.approx(13 / 14, abs=1e-12)
    r1 = ref_ags(GS, W1)[1]
    r2 = ref_ags(g2, w2)[1]
    pooled = np.concatenate([r1, r2]).mean()  # 5 channels
    assert pooled != pytest.approx((r1.mean() + r2.mean()) / 2, rel=1e-3)
    assert float(metrics["ovsw/ags_ratio"]) == pytest.approx(pooled, rel=1e-10)
