"""BiPer (Vargas et al., CVPR 2024), per equation, against the hand values of
``docs/specs/biper.md`` §9 and an independent float64 reference written here from §2-§4
(no code shared with the implementation).

Spec lines tested:

* §2.1/§2.2 stage 2: b = sign(sin(ω·W)) of the raw latent weight (sign(0) = +1), backward
  ω·cos(ω·W) (identity STE on the outer sign only); stage 1: W̃ = sin(ω·W), same backward.
* §2.5 regulariser: reg · Σ_layers mean(sin²(ω·W_l)), gradient reg·ω·sin(2ω·w)/n_l.
* §3 activations: ReCU's train-only per-sample std (unbiased, +1e-5, not detached), ApproxSign.
* §4 α: learnable per output channel, U[0, 1) init; output = conv(b_a, b) ⊙ α_c.
* §7 export: packed bits are the signs of sin(ω·W); stage 1 is refused (W32A1).
* §8.4 composition refusals; §8.2/§9.13 field validation; Trap 14: sign history on sin(ω·W).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import OrderedDict

import pytest
import torch
from _helpers import RefApproxSign, ref_sign
from torch import nn
from torch.nn import functional as F

import bnnkit
import bnnkit.binarize
import bnnkit.export
import bnnkit.nn
from bnnkit.errors import ConfigError
from bnnkit.methods import binarize_, binary_layers, get_method

DT = torch.float64
OMEGA = 20.0
PI = math.pi


# -- an independent reference, written from the spec ---------------------------------------------


def ref_weight(w: torch.Tensor, omega: float, weights: str = "binary") -> torch.Tensor:
    s = torch.sin(omega * w)  # autograd differentiates the sine exactly
    return s if weights == "sine" else (s - s.detach()) + ref_sign(s).detach()


def ref_input(x: torch.Tensor, training: bool) -> torch.Tensor:
    if training:
        dims = tuple(range(1, x.ndim))
        x = x / torch.sqrt(x.var(dim=dims, keepdim=True, unbiased=True) + 1e-5)
    return RefApproxSign.apply(x)


# -- helpers --------------------------------------------------------------------------------------


def one_layer(w: torch.Tensor, alpha=None, name: str = "0", dtype=DT, **fields):
    """A one-layer Sequential (BinaryConv2d for 4-D w, BinaryLinear for 2-D) under biper."""
    if w.ndim == 4:
        cout, cin, k, _ = w.shape
        layer = bnnkit.nn.BinaryConv2d(cin, cout, k, padding=k // 2, bias=False)
    else:
        layer = bnnkit.nn.BinaryLinear(w.shape[1], w.shape[0], bias=False)
    model = nn.Sequential(OrderedDict([(name, layer)])).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
    method = get_method("biper", **fields)
    binarize_(model, method, filter_fn=lambda m, n: True)
    if alpha is not None:
        with torch.no_grad():
            layer.scale.alpha.copy_(torch.as_tensor(alpha, dtype=dtype))
    return model, layer, method


T91_W = [PI / 60, PI / 30, PI / 15, -PI / 60, PI / 80, 0.0, 0.2, -0.2, 0.05, -0.05]
T91_SIN = [0.86602540, 0.86602540, -0.86602540, -0.86602540, 0.70710678,
           0.0, -0.75680250, 0.75680250, 0.84147098, -0.84147098]  # fmt: skip
T91_OUT = [1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0, -1.0]
T91_GRAD = [10.0, -10.0, -10.0, 10.0, 14.14213562, 20.0,
            -13.07287242, -13.07287242, 10.80604612, 10.80604612]  # fmt: skip


def t(values, dtype=DT):
    return torch.tensor(values, dtype=dtype)


# -- 9.1 PeriodicSign, 9.2 SineWeight, square_wave ------------------------------------------------


def test_periodic_sign_forward_and_backward_table_9_1():
    b = bnnkit.binarize.PeriodicSign(OMEGA)
    assert isinstance(b, bnnkit.binarize.Binarizer)
    assert b.two_valued is True and bnnkit.binarize.IdentitySTESign.two_valued is True
    w = t(T91_W).requires_grad_(True)
    out = b(w)
    assert out.dtype == DT
    assert torch.equal(out.detach(), t(T91_OUT))  # w=π/15 and 0.2 give -1 though w > 0
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(w.grad, t(T91_GRAD), rtol=0, atol=1e-7)
    w2 = t(T91_W).requires_grad_(True)
    g = torch.linspace(-2.0, 3.0, len(T91_W), dtype=DT)  # the upstream gradient is multiplied
    b(w2).backward(g)
    torch.testing.assert_close(w2.grad, g * t(T91_GRAD), rtol=0, atol=1e-7)


def test_periodic_sign_uses_its_own_omega():
    # ω = 5: 5·0.2 = 1 rad (sin > 0, +1, unlike ω = 20); ∂ = 5cos(1) = 2.70151153.
    b = bnnkit.binarize.PeriodicSign(5.0)
    w = t([0.2, 0.7, -0.2]).requires_grad_(True)  # 5·0.7 = 3.5 rad > π: -1
    out = b(w)
    assert torch.equal(out.detach(), t([1.0, -1.0, -1.0]))
    out.sum().backward()
    torch.testing.assert_close(w.grad, 5.0 * torch.cos(5.0 * w.detach()), rtol=0, atol=1e-12)
    assert w.grad[0].item() == pytest.approx(2.70151153, abs=1e-7)


def test_periodic_sign_sign_input_is_the_sine_and_has_no_inference_shift():
    b = bnnkit.binarize.PeriodicSign(OMEGA)
    w = t(T91_W)
    torch.testing.assert_close(b.sign_input(w), t(T91_SIN), rtol=0, atol=1e-7)
    with pytest.raises(NotImplementedError):
        b.inference_shift()


def test_sine_weight_forward_and_backward_table_9_2():
    s = bnnkit.binarize.SineWeight(OMEGA)
    assert s.two_valued is False
    w = t(T91_W).requires_grad_(True)
    out = s(w)
    torch.testing.assert_close(out.detach(), t(T91_SIN), rtol=0, atol=1e-7)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(w.grad, t(T91_GRAD), rtol=0, atol=1e-7)  # = stage 2's backward


def test_square_wave_functional():
    from bnnkit.binarize.functional import square_wave

    out = square_wave(t(T91_W), OMEGA)
    assert torch.equal(out, t(T91_OUT))
    assert torch.equal(square_wave(t([0.2, 0.7]), 5.0), t([1.0, -1.0]))


def test_float32_boundary_case_9_15():
    # fp32(π/20)·20 = 3.1415927 > π (sin ≈ -8.7e-8): -1; fp32(π/10)·20 > 2π: +1; 0: +1.
    w = torch.tensor([PI / 20, 2 * PI / 20, 0.0], dtype=torch.float32)
    b = bnnkit.binarize.PeriodicSign(OMEGA)
    out = b(w)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([-1.0, 1.0, 1.0]))
    assert torch.equal(ref_sign(b.sign_input(w)), out)


# -- the method: registration, fields, validation --------------------------------------------------


def test_registered_frozen_dataclass_with_defaults():
    assert "biper" in bnnkit.list_methods()
    m = bnnkit.get_method("biper")
    assert m.name == "biper"
    fields = {f.name: f.default for f in dataclasses.fields(m)}
    assert fields["omega"] == 20.0 and fields["weights"] == "binary" and fields["reg"] == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.omega = 30.0  # type: ignore[misc]
    m2 = bnnkit.get_method({"name": "biper", "omega": 30.0, "weights": "sine", "reg": 0.037})
    assert (m2.omega, m2.weights, m2.reg) == (30.0, "sine", 0.037)


@pytest.mark.parametrize(
    ("field", "value"),
    [("omega", 0.0), ("omega", -1.0), ("weights", "float"), ("reg", -1.0)],
)
def test_field_validation_9_13(field, value):
    with pytest.raises(ConfigError) as info:
        get_method("biper", **{field: value})
    assert field in str(info.value)


# -- 9.3 layer level ---------------------------------------------------------------------------------


def test_layer_builds_the_specified_modules():
    w = torch.randn(16, 3, 3, 3, dtype=DT) * 0.1
    torch.manual_seed(123)
    _, layer, _ = one_layer(w, omega=OMEGA)
    assert isinstance(layer.weight_binarizer, bnnkit.binarize.PeriodicSign)
    ib = layer.input_binarizer
    assert isinstance(ib, bnnkit.binarize.StdNormApproxSign) and ib.detach_std is False
    assert ib.inference_shift() is None
    assert isinstance(layer.scale, bnnkit.binarize.LearnableScale)
    alpha = layer.scale.alpha
    assert isinstance(alpha, nn.Parameter) and alpha.requires_grad and alpha.shape == (16,)
    assert bool((alpha >= 0).all() and (alpha < 1).all()) and alpha.std() > 0.05  # U[0, 1)
    assert layer.weight_bits == 1


@pytest.mark.parametrize(
    ("weights", "kind", "bits", "y", "dalpha"),
    [("binary", "PeriodicSign", 1, 0.5, 1.0), ("sine", "SineWeight", 32, 0.37840125, 0.75680250)],
)
def test_layer_hand_values_9_3(weights, kind, bits, y, dalpha):
    model, layer, _ = one_layer(t([[0.05, 0.2, -0.05]]), alpha=[0.5], omega=OMEGA, weights=weights)
    assert type(layer.weight_binarizer) is getattr(bnnkit.binarize, kind)
    assert layer.weight_bits == bits
    assert (layer.sign_history is None) == (weights == "sine")
    if weights == "binary":
        torch.testing.assert_close(layer.binarized_weight().detach(), t([[0.5, -0.5, -0.5]]))
    out = model.train()(t([[1.0, -1.0, 1.0]]))
    assert out.item() == pytest.approx(y, abs=1e-7)
    out.sum().backward()  # ∂L/∂W = α·x·20cos(20W), the same in both stages
    want = t([[5.40302306, 6.53643621, 5.40302306]])
    torch.testing.assert_close(layer.weight.grad, want, rtol=0, atol=1e-7)
    assert layer.scale.alpha.grad.item() == pytest.approx(dalpha, abs=1e-7)


@pytest.mark.parametrize("weights", ["binary", "sine"])
@pytest.mark.parametrize("training", [True, False])
def test_conv_layer_matches_float64_reference(weights, training):
    torch.manual_seed(7)
    w = torch.randn(4, 3, 3, 3, dtype=DT) * 0.15  # s = ωσ = 3: many weights wrap
    assert (ref_sign(torch.sin(OMEGA * w)) != ref_sign(w)).any()
    alpha = t([0.3, 0.9, 0.5, 0.1])
    model, layer, _ = one_layer(w, alpha=alpha, omega=OMEGA, weights=weights)
    model.train(training)
    x = torch.randn(2, 3, 5, 5, dtype=DT)
    r = torch.randn(2, 4, 5, 5, dtype=DT)
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    (out * r).sum().backward()

    wr, ar, xr = (v.clone().requires_grad_(True) for v in (w, alpha, x))
    out_ref = F.conv2d(ref_input(xr, training), ref_weight(wr, OMEGA, weights), padding=1)
    out_ref = out_ref * ar.view(1, -1, 1, 1)
    (out_ref * r).sum().backward()
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.weight.grad, wr.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.scale.alpha.grad, ar.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-10, atol=1e-10)
    ref_bw = ar.detach().view(-1, 1, 1, 1) * ref_weight(w, OMEGA, weights)
    torch.testing.assert_close(layer.binarized_weight().detach(), ref_bw)


# -- 9.5 activations -----------------------------------------------------------------------------------


def test_activation_path_hand_values_9_5():
    _, layer, _ = one_layer(torch.full((2, 4, 1, 1), 0.05, dtype=DT), omega=OMEGA)
    ib = layer.input_binarizer.train()
    a = t([0.5, -1.0, 2.0, 0.0]).view(1, 4, 1, 1).requires_grad_(True)
    out = ib(a)
    assert torch.equal(out.detach().flatten(), t([1.0, -1.0, 1.0, 1.0]))
    out.sum().backward()
    want = t([0.95573243, 0.36693505, -0.05546507, 1.61279451])  # through σ
    torch.testing.assert_close(a.grad.flatten(), want, rtol=0, atol=1e-7)

    _, layer5, _ = one_layer(torch.full((2, 5, 1, 1), 0.05, dtype=DT), omega=OMEGA)
    ib5 = layer5.input_binarizer.eval()
    a5 = t([0.5, -1.0, 2.0, 0.0, 0.25]).view(1, 5, 1, 1).requires_grad_(True)
    ib5(a5).sum().backward()
    torch.testing.assert_close(a5.grad.flatten(), t([1.0, 0.0, 0.0, 2.0, 1.5]), rtol=0, atol=1e-12)


# -- 9.4 regulariser ------------------------------------------------------------------------------------

REG_KEY = "biper/sin2"  # the brief's contract (spec §8.2 / §9.4d call it "biper/reg")


def _reg(method, model):
    layers = binary_layers(model)
    out = method.extra_losses(layers, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    assert set(out) == {REG_KEY}, f"extra_losses keys {sorted(out)}"
    return out[REG_KEY]


@pytest.mark.parametrize(
    ("w", "value", "grad"),
    [  # 9.4a, 9.4b; ∂/∂W = τ·20·sin(40W)/n
        ([[PI / 80, PI / 40, 0.0]], 0.0185, [[0.24666667, 0.0, 0.0]]),
        ([[0.05, -0.1], [0.3, 0.0]], 0.01491996, [[0.16822002, 0.14000846], [-0.09926599, 0.0]]),
    ],
)
def test_regulariser_value_and_gradient_9_4ab(w, value, grad):
    model, layer, method = one_layer(t(w), omega=OMEGA, reg=0.037)
    loss = _reg(method, model)
    assert loss.ndim == 0 and loss.requires_grad
    assert loss.item() == pytest.approx(value, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(layer.weight.grad.double(), t(grad), rtol=0, atol=1e-6)


def test_regulariser_9_4c_is_a_sum_of_per_layer_means():
    # layer A: W = [π/80] (n = 1); layer B: W = [0, π/40] (n = 2); a float first layer with a
    # large sin² stays out.
    fp = nn.Linear(3, 1, bias=False)
    a = bnnkit.nn.BinaryLinear(1, 1, bias=False)
    b = bnnkit.nn.BinaryLinear(2, 1, bias=False)
    model = nn.Sequential(OrderedDict([("fp", fp), ("a", a), ("b", b)])).double()
    with torch.no_grad():
        fp.weight.copy_(t([[PI / 40, PI / 40, PI / 40]]))
        a.weight.copy_(t([[PI / 80]]))
        b.weight.copy_(t([[0.0, PI / 40]]))
    method = get_method("biper", omega=OMEGA, reg=0.037)
    binarize_(model, method, filter_fn=lambda m, n: n != "fp")
    assert [n for n, _ in binary_layers(model)] == ["a", "b"]
    loss = _reg(method, model)
    assert loss.item() == pytest.approx(0.037, rel=1e-6)  # not 0.0185 (a global mean)
    loss.backward()
    assert a.weight.grad.item() == pytest.approx(0.037 * OMEGA * 1.0 / 1, rel=1e-5)
    zero = t([[0.0, 0.0]])  # sin(0), sin(π)
    torch.testing.assert_close(b.weight.grad.double(), zero, rtol=0, atol=1e-6)


def test_regulariser_scales_with_reg_and_omega():
    w = t([[0.05, -0.1, 0.3]])
    for omega, reg in [(20.0, 0.0468), (7.0, 0.5)]:
        model, _, method = one_layer(w, omega=omega, reg=reg)
        want = reg * float((torch.sin(omega * w) ** 2).mean())
        assert _reg(method, model).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("weights", ["binary", "sine"])
def test_regulariser_absent_when_reg_is_zero_9_4d(weights):
    model, _, method = one_layer(t([[0.05, 0.2]]), omega=OMEGA, weights=weights)
    out = method.extra_losses(binary_layers(model), torch.zeros(1, 2), torch.zeros(1))
    assert out == {}


# -- 9.6 sign history --------------------------------------------------------------------------------


def test_sign_history_follows_sin_not_w_9_6():
    before = t([[0.15, -0.01, 0.30, 0.10]])
    after = t([[0.16, 0.01, 0.33, 0.12]])
    model, layer, _ = one_layer(before, omega=OMEGA)
    h = layer.sign_history
    assert h is not None
    assert torch.equal(h.negative, torch.tensor([[False, True, True, False]]))  # sin(20w) < 0
    with torch.no_grad():
        layer.weight.copy_(after)
    bnnkit.nn.update_sign_history(model)
    assert torch.equal(h.negative, torch.tensor([[True, False, False, False]]))
    # sign(w) would say [no, yes, no, no]
    assert torch.equal(h.flipped, torch.tensor([[True, True, True, False]]))


# -- 9.7 / 9.8 export -----------------------------------------------------------------------------------


def _unpacked(packed, cin: int) -> torch.Tensor:
    from bnnkit.export.pack import unpack_signs

    bits = packed.weight_bits
    if bits.ndim == 4:  # (O, kH, kW, words) -> (O, C, kH, kW)
        return unpack_signs(bits, cin).permute(0, 3, 1, 2)
    return unpack_signs(bits, cin)


def test_export_packs_signs_of_the_sine_9_7():
    w = t([[0.05, 0.2, -0.05, -0.2], [0.1, 0.16, -0.3, 0.01]], torch.float32).view(2, 4, 1, 1)
    model, layer, _ = one_layer(w, alpha=[0.3, 0.7], dtype=torch.float32, omega=OMEGA)
    want_bw = t([[0.3, -0.3, -0.3, 0.3], [0.7, -0.7, 0.7, 0.7]], torch.float32).view(2, 4, 1, 1)
    torch.testing.assert_close(layer.binarized_weight().detach(), want_bw)
    packed_model = bnnkit.export.convert(model, check=True)
    ((_, packed),) = bnnkit.export.packed_layers(packed_model)
    torch.testing.assert_close(packed.scale, torch.tensor([0.3, 0.7]))
    neg = (_unpacked(packed, 4) < 0).flatten(1)
    assert neg.int().tolist() == [[0, 1, 1, 0], [0, 1, 0, 0]]  # sign(W): [[0,0,1,1],[0,0,1,0]]
    x = torch.randn(3, 4, 5, 5)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(packed_model(x), model(x), rtol=1e-4, atol=1e-5)


def test_export_random_conv_with_batchnorm_matches_float_eval():
    torch.manual_seed(11)
    conv = bnnkit.nn.BinaryConv2d(8, 4, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(4)
    model = nn.Sequential(OrderedDict([("conv", conv), ("bn", bn)]))
    with torch.no_grad():
        conv.weight.normal_(0.0, 0.2)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    binarize_(model, get_method("biper", omega=OMEGA), filter_fn=lambda m, n: n == "conv")
    w = conv.weight.detach()
    want = ref_sign(torch.sin(OMEGA * w))
    assert (want != ref_sign(w)).sum() > 20  # the two signs really differ
    packed_model = bnnkit.export.convert(model)
    ((_, packed),) = bnnkit.export.packed_layers(packed_model)
    assert torch.equal(_unpacked(packed, 8), want)
    model.eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(packed_model(x), model(x), rtol=1e-4, atol=1e-5)


def test_stage1_is_not_exported_9_8():
    model, layer, _ = one_layer(
        torch.randn(2, 4, 1, 1) * 0.1, name="conv_sine", dtype=torch.float32,
        omega=OMEGA, weights="sine",
    )  # fmt: skip
    assert layer.weight_bits == 32 and layer.sign_history is None
    with pytest.raises(bnnkit.export.ExportError) as info:
        bnnkit.export.convert(model)
    msg = str(info.value)
    assert "conv_sine" in msg and "W32A1" in msg, msg


# -- 9.11 composition ---------------------------------------------------------------------------------


def _assert_names(msg: str, *names: str) -> None:
    for n in names:
        assert re.search(rf"\b{n}\b", msg), msg


@pytest.mark.parametrize("top", ["ovsw", "rebnn"])
def test_rule_methods_refuse_a_biper_base_9_11(top):
    for build in (
        lambda: get_method({"name": top, "base": "biper"}),
        lambda: get_method(top, base="biper"),
        lambda: get_method(top, base=get_method("biper", omega=OMEGA)),
    ):
        with pytest.raises(ConfigError) as info:
            build()
        msg = str(info.value)
        _assert_names(msg, top, "biper")
        assert "periodic" in msg.lower(), msg


def test_rule_method_refuses_a_sine_biper_base():
    with pytest.raises(ConfigError) as info:
        get_method({"name": "ovsw", "base": {"name": "biper", "weights": "sine"}})
    _assert_names(str(info.value), "ovsw", "biper")


@pytest.mark.parametrize("base", sorted(bnnkit.list_methods()))
def test_biper_cannot_sit_on_any_base(base):
    with pytest.raises(ConfigError) as info:
        get_method({"name": "biper", "base": base})
    _assert_names(str(info.value), "biper")
