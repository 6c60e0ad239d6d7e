"""ReBNN (Xu et al., AAAI 2023), per equation, against hand values and an independent numpy
reference written here from ``methods.md`` §3 (no code shared with ``bnnkit.methods.rebnn``).

Spec lines tested (methods.md §3.1, §3.2, §8 traps 1-3):

* paper: ŵ = α_i sign(w); δw_i = α_i (∂L/∂ŵ_i ⊙ 1_{|w_i|≤1}) + γ_i (w_i − α_i b_i);
  ∂L_R/∂α_i = −γ_i Σ_j (w_ij − α_i b_ij) b_ij; α initialised to mean|w_i| (CAM).
* γ_i^{t+1} = (1/M)·‖b^t ⊙ b^{t+1} − 1‖₀ · max_j |∂L/∂ŵ_ij^t| (Eq. 3.150), from a per-weight
  previous-sign buffer (not w − grad).
* official code: ŵ = 0.02·|α_raw|·sign(w); grad_w = α·g + γ(w − 0.02 α sign w), no mask;
  grad_α = Σ g ⊙ w − γ Σ (w − 0.02 α sign w) ⊙ 0.02 sign w, chained through abs.
* the reconstruction term is injected as gradient only, never added to the loss value.

The task gradient dL/dŵ is set exactly to a chosen G: the input batch is the 4×4 Hadamard
matrix H (RSign with zero shift keeps it), out = H ŵᵀ, and the loss is Σ out ⊙ R with
R = H Gᵀ / 4, so dL/dŵ = Rᵀ H = G Hᵀ H / 4 = G.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bnnkit
from bnnkit.methods import TrainState, binarize_, binary_layers, get_method
from bnnkit.nn import update_sign_history

DT = torch.float64
H = torch.tensor(
    [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=DT
)  # H Hᵀ = Hᵀ H = 4 I

# The hand scenario: 2 output channels x 4 weights, three steps.
W0 = np.array([[0.5, -0.2, 1.5, -0.1], [0.3, 1.0, -0.6, 2.0]])  # |w| = 1 exactly at (1, 1)
W1 = np.array([[-0.1, -0.2, 1.4, 0.05], [0.3, 1.0, -0.6, 2.0]])  # row 0: 2/4 flips; row 1: 0/4
W2 = np.array([[-0.1, -0.2, 1.4, -0.05], [-0.3, -1.0, 0.6, 2.0]])  # row 0: 1/4; row 1: 3/4
W3 = -W2  # every sign flips, but step 3's gradient is zero
G1 = np.array([[0.1, -0.4, 0.2, 0.3], [-0.05, 0.02, 0.5, -0.01]])  # row max |G|: 0.4, 0.5
G2 = np.array([[0.3, 0.1, -0.2, 0.6], [0.1, 0.2, 0.3, 0.4]])  # 0.6, 0.4
G3 = np.zeros((2, 4))
PAPER_ALPHA = np.array([0.5, 0.8])
RAW_ALPHA = np.array([1.5, -2.0])  # official-code alpha_raw (effective scale 0.02 |alpha_raw|)

# gamma after steps 1, 2, 3 (and initially), per mode; FIXED is the "fixed" mode's field value.
FIXED = 0.05
GAMMAS = {
    "paper": [[0.0, 0.0], [0.5 * 0.4, 0.0], [0.25 * 0.6, 0.75 * 0.4], [0.0, 0.0]],
    "max": [[0.0, 0.0], [0.4, 0.5], [0.6, 0.4], [0.0, 0.0]],
    "constant": [[2e-4, 2e-4]] * 4,
    "fixed": [[FIXED, FIXED]] * 4,
}


def ALL(module: nn.Module, name: str) -> bool:
    """filter_fn: binarize every layer."""
    return True


def t(a) -> torch.Tensor:
    """A float64 tensor that owns a *copy* of ``a`` (hooks edit grads in place)."""
    return torch.tensor(np.array(a, dtype=np.float64), dtype=DT)


def sgn(a: np.ndarray) -> np.ndarray:
    return np.where(a >= 0, 1.0, -1.0)


# -- independent numpy reference --------------------------------------------------------------------


def ref_grads(variant: str, w, alpha, g, gamma) -> tuple[np.ndarray, np.ndarray]:
    """(w.grad, alpha.grad) after backward + before_optimizer_step, from the spec formulas."""
    w, alpha, g, gamma = (np.asarray(v, dtype=np.float64) for v in (w, alpha, g, gamma))
    b = sgn(w)
    if variant == "paper":
        a = alpha[:, None]
        task_w = a * g * (np.abs(w) <= 1.0)
        task_a = (g * b).sum(1)
        resid = w - a * b
        return task_w + gamma[:, None] * resid, task_a - gamma * (resid * b).sum(1)
    a = np.abs(alpha)[:, None]
    task_w = a * g
    task_a = np.sign(alpha) * (g * w).sum(1)
    resid = w - 0.02 * a * b
    recon_a = np.sign(alpha) * (-gamma * (resid * 0.02 * b).sum(1))
    return task_w + gamma[:, None] * resid, task_a + recon_a


def ref_recon_loss(variant: str, w, alpha, gamma) -> float:
    w, alpha, gamma = (np.asarray(v, dtype=np.float64) for v in (w, alpha, gamma))
    scale = alpha if variant == "paper" else 0.02 * np.abs(alpha)
    resid = w - scale[:, None] * sgn(w)
    return float((gamma / 2 * (resid**2).sum(1)).sum())


# -- harness --------------------------------------------------------------------------------------


def rebnn_model(w=W0, **fields):
    layer = bnnkit.nn.BinaryLinear(4, 2, bias=False)
    model = nn.Sequential(layer).double()
    with torch.no_grad():
        layer.weight.copy_(t(w))
    method = get_method("rebnn", **fields)
    binarize_(model, method, filter_fn=ALL)
    return model, layer, method, binary_layers(model)


def set_alpha(layer, alpha) -> None:
    with torch.no_grad():
        layer.scale.alpha.copy_(t(alpha))


def backward_with(model, g) -> torch.Tensor:
    """Forward the Hadamard batch and backward a loss whose dL/dŵ is exactly ``g``."""
    model.zero_grad(set_to_none=True)
    layer = model[0]
    with torch.no_grad():
        for p in layer.input_binarizer.parameters():
            p.zero_()  # RSign shift 0: sign(H) = H
    out = model(H.clone())
    loss = (out * (H @ t(g).T / 4)).sum()
    loss.backward()
    return loss


def one_step(model, method, layers, g, w_next, step: int):
    """on_step_start -> forward/backward -> before -> simulated optimizer step -> after."""
    layer = model[0]
    state = TrainState(step=step, epoch=0, epochs=1, progress=0.0, lr=0.1)
    method.on_step_start(layers, state)
    backward_with(model, g)
    grad_max = layer.method_state["rebnn"].grad_max.detach().clone()
    method.before_optimizer_step(layers, state)
    grads = (layer.weight.grad.detach().clone(), layer.scale.alpha.grad.detach().clone())
    with torch.no_grad():
        layer.weight.copy_(t(w_next))
    update_sign_history(layers)  # the engine's step: right after optimizer.step
    metrics = method.after_optimizer_step(layers, state)
    return grads, grad_max, metrics


# -- validation and construction ------------------------------------------------------------------


def test_bad_gamma_mode_and_variant_are_value_errors_naming_the_field():
    with pytest.raises(ValueError, match="gamma_mode"):
        get_method("rebnn", gamma_mode="eq3150")
    with pytest.raises(ValueError, match="variant"):
        get_method("rebnn", variant="code")
    m = get_method("rebnn")
    assert (m.gamma_mode, m.gamma, m.variant) == ("paper", 2e-4, "paper")


def test_paper_alpha_is_initialised_to_channel_mean_abs_and_forward_is_alpha_sign_w():
    _, layer, _, _ = rebnn_model()
    alpha = layer.scale.alpha
    assert isinstance(alpha, nn.Parameter) and alpha.shape == (2,)
    torch.testing.assert_close(alpha.detach(), t([2.3 / 4, 3.9 / 4]), rtol=1e-12, atol=0)
    expected = t([[0.575, -0.575, 0.575, -0.575], [0.975, 0.975, -0.975, 0.975]])
    torch.testing.assert_close(layer.binarized_weight(), expected, rtol=1e-12, atol=1e-15)


def test_official_alpha_is_random_normal_and_forward_is_0_02_abs_alpha_sign_w():
    torch.manual_seed(0)
    layer = bnnkit.nn.BinaryLinear(8, 64, bias=False)
    model = nn.Sequential(layer).double()
    binarize_(model, get_method("rebnn", variant="official_code"), filter_fn=ALL)
    alpha = layer.scale.alpha
    assert isinstance(alpha, nn.Parameter) and alpha.shape == (64,)
    assert bool((alpha < 0).any())  # randn, not mean|w| (never negative)
    _, layer2, _, _ = rebnn_model(variant="official_code")
    set_alpha(layer2, RAW_ALPHA)
    expected = t([[0.03, -0.03, 0.03, -0.03], [0.04, 0.04, -0.04, 0.04]])
    torch.testing.assert_close(layer2.binarized_weight(), expected, rtol=1e-12, atol=1e-15)


def test_inputs_use_rsign_a_learnable_shift_with_approx_sign():
    _, layer, _, _ = rebnn_model()
    params = [p for p in layer.input_binarizer.parameters() if p.requires_grad]
    assert len(params) == 1 and params[0].shape == (4,)
    assert torch.equal(params[0].detach(), torch.zeros(4, dtype=DT))
    shift = t([0.2, -0.3, 0.0, 0.1])
    with torch.no_grad():
        params[0].copy_(shift)
    x = t([[0.1, 0.1, -0.4, -0.05], [-0.3, 0.5, 2.0, -1.0]]).requires_grad_(True)
    out = layer.binarized_input(x)
    out.backward(torch.ones_like(out))
    z = x.detach() + shift
    assert torch.equal(out, torch.where(z >= 0, 1.0, -1.0).to(DT))
    torch.testing.assert_close(x.grad, torch.clamp(2 - 2 * z.abs(), min=0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", ["paper", "max", "constant", "fixed"])
def test_initial_buffers(mode):
    fields = {"gamma": FIXED} if mode == "fixed" else {"gamma": 0.3} if mode == "constant" else {}
    _, layer, _, _ = rebnn_model(gamma_mode=mode, **fields)
    st = layer.method_state["rebnn"]
    assert torch.equal(layer.sign_history.negative, t(W0) < 0)
    assert st.gamma.shape == (2,) and st.grad_max.shape == (2,)
    torch.testing.assert_close(st.gamma, t(GAMMAS[mode][0]), rtol=1e-12, atol=0)
    names = dict(layer.named_buffers())
    for key in ("sign_history.negative", "method_state.rebnn.gamma", "method_state.rebnn.grad_max"):
        assert key in names


# -- task gradients (chain rule), before any reconstruction term ------------------------------------


def test_paper_task_gradients_by_hand():
    model, layer, _, _ = rebnn_model()
    set_alpha(layer, PAPER_ALPHA)
    backward_with(model, G1)
    # alpha_i * G * 1{|w| <= 1}: 1.5 and 2.0 are masked, |w| = 1.0 is kept (closed).
    expected_w = t([[0.05, -0.2, 0.0, 0.15], [-0.04, 0.016, 0.4, 0.0]])
    torch.testing.assert_close(layer.weight.grad, expected_w, rtol=1e-12, atol=1e-15)
    # sum_j G_ij sign(w_ij): 0.1 + 0.4 + 0.2 - 0.3 and -0.05 + 0.02 - 0.5 - 0.01
    torch.testing.assert_close(layer.scale.alpha.grad, t([0.4, -0.54]), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(
        layer.method_state["rebnn"].grad_max, t([0.4, 0.5]), rtol=1e-12, atol=0
    )


def test_official_task_gradients_by_hand():
    model, layer, _, _ = rebnn_model(variant="official_code")
    set_alpha(layer, RAW_ALPHA)
    backward_with(model, G1)
    # |alpha_raw| * G, no mask and no 0.02 factor
    expected_w = t(np.array([[1.5], [2.0]]) * G1)
    torch.testing.assert_close(layer.weight.grad, expected_w, rtol=1e-12, atol=1e-15)
    # sign(alpha_raw) * sum_j G_ij w_ij (latent w): +(0.05 + 0.08 + 0.3 - 0.03), -(-0.315)
    torch.testing.assert_close(layer.scale.alpha.grad, t([0.4, 0.315]), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(
        layer.method_state["rebnn"].grad_max, t([0.4, 0.5]), rtol=1e-12, atol=0
    )


# -- reconstruction gradients -------------------------------------------------------------------------


def test_paper_reconstruction_gradients_by_hand_with_fixed_gamma():
    model, layer, method, layers = rebnn_model(gamma_mode="fixed", gamma=0.5)
    set_alpha(layer, PAPER_ALPHA)
    (gw, ga), _, _ = one_step(model, method, layers, G1, W0, step=0)
    # w - alpha b: [0, 0.3, 1.0, 0.4] and [-0.5, 0.2, 0.2, 1.2]; times 0.5, plus the task part
    expected_w = t([[0.05, -0.2 + 0.15, 0.5, 0.15 + 0.2], [-0.04 - 0.25, 0.016 + 0.1, 0.5, 0.6]])
    torch.testing.assert_close(gw, expected_w, rtol=1e-12, atol=1e-15)
    # -gamma sum_j (w - alpha b) b: -0.5 (0 - 0.3 + 1.0 - 0.4) = -0.15; -0.5 (-0.5 + 0.2 - 0.2 + 1.2)
    torch.testing.assert_close(ga, t([0.4 - 0.15, -0.54 - 0.35]), rtol=1e-12, atol=1e-15)


def test_official_reconstruction_gradients_by_hand_with_fixed_gamma():
    model, layer, method, layers = rebnn_model(
        gamma_mode="fixed", gamma=0.5, variant="official_code"
    )
    set_alpha(layer, RAW_ALPHA)
    (gw, ga), _, _ = one_step(model, method, layers, G1, W0, step=0)
    # w - 0.02|a| sign w: [0.47, -0.17, 1.47, -0.07] and [0.26, 0.96, -0.56, 1.96]; times 0.5
    recon_w = np.array([[0.235, -0.085, 0.735, -0.035], [0.13, 0.48, -0.28, 0.98]])
    torch.testing.assert_close(gw, t(np.array([[1.5], [2.0]]) * G1 + recon_w), rtol=1e-12, atol=0)
    # sign(a) * (-0.5 * sum (w - 0.02|a| s) 0.02 s): +(-0.01 * 2.18), -(-0.01 * 3.74)
    torch.testing.assert_close(ga, t([0.4 - 0.0218, 0.315 + 0.0374]), rtol=1e-12, atol=1e-15)


# -- gamma learning rule and the previous-sign buffer over three steps -----------------------------


def test_paper_mode_three_steps_by_hand():
    model, layer, method, layers = rebnn_model()
    set_alpha(layer, PAPER_ALPHA)
    st = layer.method_state["rebnn"]

    (gw, ga), gmax, _ = one_step(model, method, layers, G1, W1, step=0)
    torch.testing.assert_close(gw, t([[0.05, -0.2, 0.0, 0.15], [-0.04, 0.016, 0.4, 0.0]]))
    torch.testing.assert_close(ga, t([0.4, -0.54]))  # gamma = 0: no reconstruction yet
    torch.testing.assert_close(gmax, t([0.4, 0.5]), rtol=1e-12, atol=0)
    torch.testing.assert_close(st.gamma, t([0.2, 0.0]), rtol=1e-12, atol=1e-15)  # 2/4*0.4, 0/4
    assert torch.equal(layer.sign_history.negative, t(W1) < 0)

    (gw, ga), gmax, _ = one_step(model, method, layers, G2, W2, step=1)
    torch.testing.assert_close(gw, t([[0.23, 0.11, 0.18, 0.21], [0.08, 0.16, 0.24, 0.0]]))
    torch.testing.assert_close(ga, t([0.05, 0.4]))
    torch.testing.assert_close(gmax, t([0.6, 0.4]), rtol=1e-12, atol=0)
    torch.testing.assert_close(st.gamma, t([0.15, 0.3]), rtol=1e-12, atol=1e-15)  # 1/4, 3/4
    assert torch.equal(layer.sign_history.negative, t(W2) < 0)

    (gw, ga), gmax, _ = one_step(model, method, layers, G3, W3, step=2)
    torch.testing.assert_close(
        gw, t([[0.06, 0.045, 0.135, 0.0675], [0.15, -0.06, -0.06, 0.36]]), rtol=1e-12, atol=1e-15
    )
    torch.testing.assert_close(ga, t([0.0375, -0.21]), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(gmax, t([0.0, 0.0]), rtol=0, atol=0)
    torch.testing.assert_close(st.gamma, t([0.0, 0.0]), rtol=0, atol=0)  # 4/4 flips * 0
    assert torch.equal(layer.sign_history.negative, t(W3) < 0)


@pytest.mark.parametrize("variant", ["paper", "official_code"])
@pytest.mark.parametrize("mode", ["paper", "max", "constant", "fixed"])
def test_every_gamma_mode_over_three_steps(mode, variant):
    # constant: the field gamma is ignored (code-faithful 2e-4 whatever it says).
    fields = {"gamma": FIXED} if mode == "fixed" else {"gamma": 0.3} if mode == "constant" else {}
    model, layer, method, layers = rebnn_model(gamma_mode=mode, variant=variant, **fields)
    alpha = PAPER_ALPHA if variant == "paper" else RAW_ALPHA
    set_alpha(layer, alpha)
    ws = [W0, W1, W2, W3]
    for k, (g, w_next) in enumerate([(G1, W1), (G2, W2), (G3, W3)]):
        (gw, ga), gmax, metrics = one_step(model, method, layers, g, w_next, step=k)
        ew, ea = ref_grads(variant, ws[k], alpha, g, GAMMAS[mode][k])
        torch.testing.assert_close(gw, t(ew), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(ga, t(ea), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(gmax, t(np.abs(g).max(1)), rtol=1e-12, atol=0)
        got_gamma = layer.method_state["rebnn"].gamma
        torch.testing.assert_close(got_gamma, t(GAMMAS[mode][k + 1]), rtol=1e-12, atol=1e-15)
        assert torch.equal(layer.sign_history.negative, t(w_next) < 0)
        assert {"rebnn/recon_loss", "rebnn/gamma"} <= set(metrics)
        for key in ("rebnn/recon_loss", "rebnn/gamma"):
            assert isinstance(metrics[key], torch.Tensor) and metrics[key].ndim == 0
        assert float(metrics["rebnn/recon_loss"]) >= 0.0


# -- the reconstruction term is not in the loss; its logged value ------------------------------------


def test_reconstruction_is_not_in_the_loss_value():
    model, layer, method, layers = rebnn_model(gamma_mode="fixed", gamma=0.5)
    set_alpha(layer, PAPER_ALPHA)
    state = TrainState(step=0, epoch=0, epochs=1)
    method.on_step_start(layers, state)
    out = model(H.clone())
    w_hat = t(PAPER_ALPHA[:, None] * sgn(W0))
    torch.testing.assert_close(out, H @ w_hat.T, rtol=1e-12, atol=1e-15)
    extras = method.extra_losses(layers, out, torch.zeros(4, dtype=torch.long))
    assert all(float(v.detach().abs().sum()) == 0.0 for v in extras.values())


@pytest.mark.parametrize("variant", ["paper", "official_code"])
def test_recon_loss_metric_by_hand_with_fixed_gamma_and_unchanged_weights(variant):
    model, layer, method, layers = rebnn_model(gamma_mode="fixed", gamma=FIXED, variant=variant)
    alpha = PAPER_ALPHA if variant == "paper" else RAW_ALPHA
    set_alpha(layer, alpha)
    _, _, metrics = one_step(model, method, layers, G1, W0, step=0)  # lr = 0: W stays W0
    expected = ref_recon_loss(variant, W0, alpha, [FIXED, FIXED])
    if variant == "paper":  # 0.05/2 * (1.25 + 1.77)
        assert expected == pytest.approx(0.0755, rel=1e-12)
    assert float(metrics["rebnn/recon_loss"]) == pytest.approx(expected, rel=1e-10)
    assert float(metrics["rebnn/gamma"]) == pytest.approx(FIXED, rel=1e-12)


def test_recon_loss_metric_uses_the_gamma_of_this_steps_before_hook():
    # Reading of the contract: L_R is evaluated with the gamma that before_optimizer_step used
    # (here [0.2, 0] from step 1's flips) and the pre-step weights; W does not change in step 2,
    # so the updated gamma would be [0, 0] and would give 0 instead.
    model, layer, method, layers = rebnn_model()
    set_alpha(layer, PAPER_ALPHA)
    one_step(model, method, layers, G1, W1, step=0)
    _, _, metrics = one_step(model, method, layers, G2, W1, step=1)
    # 0.2/2 * ||[0.4, 0.3, 0.9, -0.45]||^2 = 0.1 * 1.2625
    assert float(metrics["rebnn/recon_loss"]) == pytest.approx(0.12625, rel=1e-10)
    torch.testing.assert_close(layer.method_state["rebnn"].gamma, t([0.0, 0.0]), rtol=0, atol=0)


def test_recon_loss_metric_sums_over_layers():
    torch.manual_seed(2)
    l1 = bnnkit.nn.BinaryLinear(4, 2, bias=False)
    l2 = bnnkit.nn.BinaryLinear(2, 3, bias=False)
    model = nn.Sequential(l1, l2).double()
    method = get_method("rebnn", gamma_mode="fixed", gamma=0.1)
    binarize_(model, method, filter_fn=ALL)
    layers = binary_layers(model)
    assert len(layers) == 2
    state = TrainState(step=0, epoch=0, epochs=1)
    method.on_step_start(layers, state)
    model(torch.randn(5, 4, dtype=DT)).square().sum().backward()
    method.before_optimizer_step(layers, state)
    update_sign_history(layers)  # the engine's step (no optimizer step: lr = 0)
    metrics = method.after_optimizer_step(layers, state)
    expected = sum(
        ref_recon_loss(
            "paper",
            layer.weight.detach().numpy(),
            layer.scale.alpha.detach().numpy(),
            [0.1] * layer.weight.shape[0],
        )
        for _, layer in layers
    )
    assert expected > 0
    assert float(metrics["rebnn/recon_loss"]) == pytest.approx(expected, rel=1e-10)
    assert float(metrics["rebnn/gamma"]) == pytest.approx(0.1, rel=1e-12)


# -- state ----------------------------------------------------------------------------------------


def test_prev_sign_and_gamma_survive_a_state_dict_round_trip():
    model, layer, method, layers = rebnn_model()
    set_alpha(layer, PAPER_ALPHA)
    one_step(model, method, layers, G1, W1, step=0)
    one_step(model, method, layers, G2, W2, step=1)
    sd = model.state_dict()
    assert "0.sign_history.negative" in sd and "0.method_state.rebnn.gamma" in sd
    fresh, fresh_layer, _, _ = rebnn_model(w=-W0)
    assert not torch.equal(fresh_layer.sign_history.negative, t(W2) < 0)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh_layer.sign_history.negative, t(W2) < 0)
    torch.testing.assert_close(
        fresh_layer.method_state["rebnn"].gamma, t([0.15, 0.3]), rtol=1e-12, atol=0
    )


# -- conv layers (4-D weights, per-output-channel over C_in x k x k) ----------------------------------


def _conv_dl_dwhat(scale, w, xb, r) -> np.ndarray:
    """dL/dŵ (flattened per channel) from autograd on a leaf standing for ŵ = scale ⊙ sign(w)."""
    w_hat = t(scale[:, None, None, None] * sgn(w)).requires_grad_(True)
    (torch.nn.functional.conv2d(xb, w_hat, padding=1) * r).sum().backward()
    return w_hat.grad.numpy().reshape(len(w), -1)


@pytest.mark.parametrize("variant", ["paper", "official_code"])
@pytest.mark.parametrize("mode", ["paper", "fixed"])
def test_conv_layer_gradients_and_gamma_against_the_reference(mode, variant):
    rng = np.random.default_rng(11)
    w0 = rng.normal(scale=0.8, size=(3, 2, 3, 3))
    w1 = w0.copy()
    w1[0, 0, 0, :] *= -1.0  # channel 0: 3 of 18 signs flip
    w1[2, 0] *= -1.0  # channel 2: 9 of 18 signs flip
    alpha = np.array([0.4, 0.7, 1.1]) if variant == "paper" else np.array([1.2, -0.6, 0.9])
    scale = alpha if variant == "paper" else 0.02 * np.abs(alpha)
    layer = bnnkit.nn.BinaryConv2d(2, 3, 3, padding=1, bias=False)
    model = nn.Sequential(layer).double()
    with torch.no_grad():
        layer.weight.copy_(t(w0))
    fields = {"gamma": 0.3} if mode == "fixed" else {}
    method = get_method("rebnn", gamma_mode=mode, variant=variant, **fields)
    binarize_(model, method, filter_fn=ALL)
    layers = binary_layers(model)
    set_alpha(layer, alpha)
    assert layer.sign_history.negative.shape == (3, 2, 3, 3)
    assert layer.method_state["rebnn"].gamma.shape == (3,)

    x = torch.randn(2, 2, 5, 5, dtype=DT)
    r = torch.randn(2, 3, 5, 5, dtype=DT)
    xb = torch.where(x >= 0, 1.0, -1.0).to(DT)  # the input binarizer with shift 0
    g0 = _conv_dl_dwhat(scale, w0, xb, r)
    if mode == "fixed":
        gammas = [[0.3] * 3, [0.3] * 3]
    else:
        gammas = [[0.0] * 3, [3 / 18 * np.abs(g0[0]).max(), 0.0, 9 / 18 * np.abs(g0[2]).max()]]
    for k, w_now in enumerate([w0, w1]):
        state = TrainState(step=k, epoch=0, epochs=1)
        method.on_step_start(layers, state)
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p in layer.input_binarizer.parameters():
                p.zero_()
        (model(x) * r).sum().backward()
        gk = _conv_dl_dwhat(scale, w_now, xb, r)
        torch.testing.assert_close(
            layer.method_state["rebnn"].grad_max, t(np.abs(gk).max(1)), rtol=1e-12, atol=0
        )
        method.before_optimizer_step(layers, state)
        ew, ea = ref_grads(variant, w_now.reshape(3, -1), alpha, gk, gammas[k])
        torch.testing.assert_close(
            layer.weight.grad, t(ew.reshape(w0.shape)), rtol=1e-9, atol=1e-13
        )
        torch.testing.assert_close(layer.scale.alpha.grad, t(ea), rtol=1e-9, atol=1e-13)
        with torch.no_grad():
            layer.weight.copy_(t(w1))  # step 0 flips signs, step 1 does not move
        update_sign_history(layers)  # the engine's step: right after optimizer.step
        method.after_optimizer_step(layers, state)
        if k == 0:
            torch.testing.assert_close(
                layer.method_state["rebnn"].gamma, t(gammas[1]), rtol=1e-10, atol=1e-15
            )
            assert torch.equal(layer.sign_history.negative, t(w1) < 0)


# -- the Scale interface (what export and summaries fold) and accumulated gradients ---------------


@pytest.mark.parametrize(
    ("variant", "alpha", "effective"),
    [
        ("paper", PAPER_ALPHA, PAPER_ALPHA),
        ("official_code", RAW_ALPHA, 0.02 * np.abs(RAW_ALPHA)),
    ],
)
def test_scale_module_returns_the_effective_per_channel_scale(variant, alpha, effective):
    # bnnkit.binarize.Scale: forward(W) -> alpha broadcastable to W; binarized_weight = alpha * b
    _, layer, _, _ = rebnn_model(variant=variant)
    set_alpha(layer, alpha)
    s = layer.scale(layer.weight)
    assert s.shape == (2, 1)
    torch.testing.assert_close(s.detach().reshape(2), t(effective), rtol=1e-12, atol=0)
    torch.testing.assert_close(layer.binarized_weight(), s * t(sgn(W0)), rtol=1e-12, atol=0)


def test_grad_max_is_of_the_steps_total_gradient_when_backward_runs_twice():
    # Two backward passes in one step (gradient accumulation / a layer used twice): the step's
    # dL/dŵ is G1 + G2, so grad_max = max_j |G1 + G2| = [0.9, 0.8], not the last pass's [0.6, 0.4].
    model, layer, method, layers = rebnn_model()
    set_alpha(layer, PAPER_ALPHA)
    state = TrainState(step=0, epoch=0, epochs=1)
    method.on_step_start(layers, state)
    backward_with(model, G1)
    out = model(H.clone())
    (out * (H @ t(G2).T / 4)).sum().backward()  # accumulate, no zero_grad
    torch.testing.assert_close(
        layer.method_state["rebnn"].grad_max, t([0.9, 0.8]), rtol=1e-12, atol=0
    )


@pytest.mark.parametrize(
    ("variant", "alpha"), [("paper", PAPER_ALPHA), ("official_code", RAW_ALPHA)]
)
def test_forward_is_the_same_without_autograd_and_in_eval(variant, alpha):
    model, layer, _, _ = rebnn_model(variant=variant)
    set_alpha(layer, alpha)
    w_hat = layer.binarized_weight().detach()
    with torch.no_grad():
        assert torch.equal(layer.binarized_weight(), w_hat)
    model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(H.clone()), H @ w_hat.T, rtol=1e-12, atol=1e-15)
