"""AdaBin (Tu et al., ECCV 2022), per equation, against the hand values of
``docs/specs/adabin.md`` §9 (cases 1-19) and an independent float64 reference written here from
§2-§3 (no code shared with the implementation).

Spec lines tested:

* §2.1 weights, per output channel (dim 0; statistics over every other dim): β_w = mean,
  α_w = population std (divisor n, no eps), not detached; ŵ = (W − β_w)/α_w; s_w = sign(ŵ)
  (bnnkit: sign(0) = +1); W_b = α_w·s_w + β_w (cases 1, 2, 7, 8).
* §2.2 backward: EDE k·t·(1 − tanh²(t·ŵ)) on the *standardised* weight, then autograd through
  the standardisation and through α_w, β_w of W_b (cases 3, 4, 5; the closed form).
* §2.3 / §8.2 ``on_step_start``: t, k = ede_schedule(e, E, t_min, t_max) per epoch when
  progressive (built with the epoch-0 values); fixed t = 0.1, k = 10 otherwise (case 6).
* §3.1-§3.3 activations: 0-d α_a (init 1), β_a (init 0); a_b = α_a·(S((x − β_a)/α_a) + β_a),
  centre α_a·β_a (not β_a), ApproxSign surrogate; ∂L/∂β_a = Σ g·(α_a − F') with its dense
  α_a term; ∂L/∂α_a = Σ g·(s + β_a − x'·F'); negative α_a; tie x = β_a (cases 9-12).
* §3.4 Maxout p·relu(x) − n·relu(−x), init p = 1, n = 0.25 (case 13).
* §4.1 the layer conv2d(a_b, W_b) with zero padding of the binarized input (case 14);
  §8.2 ``pad_value`` ±1 refused (case 16).
* §4.2-§4.4, §8.3 the model variants: Maxout after the stem BN and after each residual add, no
  hardtanh, option-A shortcut by subsampling x[:, :, ::2, ::2], kaiming init (Linear included on
  ResNet-20; fan_out and BN γ = 1 on ImageNet; PyTorch defaults on CIFAR ResNet-18); binary conv
  counts; 271,262 parameters, 18 (α, β) pairs, 1,376 Maxout slopes (case 17).
* §7.2 export refused, naming the first binary layer (case 15); §8.2 metrics; §8.2 parameter
  groups with ``decay_rule: all`` decay α_a, β_a and the Maxout slopes (case 17, trap 8);
  sign history on sign(W − β_w) (case 18, trap 17); §8.5 composition (case 19).
* §10 traps 1-7, 14: each wrong variant the spec names (unbiased std, detached statistics, EDE on
  W, per-layer statistics, centre β_a, no dense ∂/∂β_a term) is shown to change a checked value.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import OrderedDict

import pytest
import torch
from _helpers import RefApproxSign, ref_sign, sample_input
from torch import nn
from torch.nn import functional as F

import bnnkit
import bnnkit.binarize
import bnnkit.export
import bnnkit.methods
import bnnkit.nn
from bnnkit.config import OptimizerConfig
from bnnkit.errors import ConfigError
from bnnkit.methods import TrainState, binarize_, binary_layers, get_method
from bnnkit.methods.adabin import (
    AdaBin,
    AdaBinActivation,
    AdaBinAffineScale,
    AdaBinWeightSign,
)
from bnnkit.methods.irnet import ede_schedule
from bnnkit.training.optim import param_groups

DT = torch.float64
TOL = 1e-6


def t(values, dtype=DT) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def close(got: torch.Tensor, want, atol: float = TOL) -> None:
    want = want if isinstance(want, torch.Tensor) else t(want)
    torch.testing.assert_close(got.detach().to(DT).reshape(want.shape), want, rtol=0, atol=atol)


# -- an independent reference, written from the spec (§2-§3) --------------------------------------


def ref_ede(x: torch.Tensor, t_: float, k: float) -> torch.Tensor:
    return k * t_ * (1.0 - torch.tanh(t_ * x) ** 2)


class RefEDESign(torch.autograd.Function):
    """Forward sign(u) (sign(0) = +1); backward g·k·t·(1 − tanh²(t·v)), v = u unless given."""

    @staticmethod
    def forward(ctx, u, v, t_, k):
        ctx.save_for_backward(v)
        ctx.t, ctx.k = t_, k
        return ref_sign(u)

    @staticmethod
    def backward(ctx, g):
        (v,) = ctx.saved_tensors
        return g * ref_ede(v, ctx.t, ctx.k), None, None, None


def ref_stats(w: torch.Tensor, unbiased: bool = False, per_layer: bool = False, detach=False):
    """(α_w, β_w) of §2.1: per output channel mean and population std (or the wrong variants)."""
    dims = tuple(range(w.ndim)) if per_layer else tuple(range(1, w.ndim))
    beta = w.mean(dim=dims, keepdim=True)
    n = w[0].numel() if not per_layer else w.numel()
    alpha = torch.sqrt(((w - beta) ** 2).sum(dim=dims, keepdim=True) / (n - 1 if unbiased else n))
    if detach:
        alpha, beta = alpha.detach(), beta.detach()
    return alpha, beta


def ref_binary_weight(
    w: torch.Tensor, t_: float, k: float, *, unbiased=False, per_layer=False, detach=False,
    ede_on_w=False,
) -> torch.Tensor:  # fmt: skip
    """W_b = α_w·sign(ŵ) + β_w with EDE on ŵ (or the wrong variants of §10)."""
    alpha, beta = ref_stats(w, unbiased, per_layer, detach)
    w_hat = (w - beta) / alpha
    s = RefEDESign.apply(w_hat, w if ede_on_w else w_hat, t_, k)
    return alpha * s + beta


def ref_activation(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, centre_beta=False, dense_beta=True
) -> torch.Tensor:
    """a_b = α·(S((x − β)/α) + β), S = sign with ApproxSign (or the wrong variants of §10)."""
    s = RefApproxSign.apply((x - b) / a)
    if centre_beta:  # the [PAPER-R] form α·s + β
        return a * s + b
    return a * s + a * (b if dense_beta else b.detach())


def ref_maxout(x: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    shape = (1, -1, *([1] * (x.ndim - 2)))
    return p.view(shape) * torch.relu(x) - n.view(shape) * torch.relu(-x)


# -- helpers --------------------------------------------------------------------------------------


def ALL(module: nn.Module, name: str) -> bool:
    return True


def one_layer(w: torch.Tensor, padding=0, name: str = "0", **fields):
    """A one-layer float64 Sequential (BinaryConv2d for 4-D w, BinaryLinear for 2-D) under adabin."""
    if w.ndim == 4:
        cout, cin, kh, kw = w.shape
        layer = bnnkit.nn.BinaryConv2d(cin, cout, (kh, kw), padding=padding, bias=False)
    else:
        layer = bnnkit.nn.BinaryLinear(w.shape[1], w.shape[0], bias=False)
    model = nn.Sequential(OrderedDict([(name, layer)])).to(DT)
    with torch.no_grad():
        layer.weight.copy_(w)
    method = get_method("adabin", **fields)
    binarize_(model, method, filter_fn=ALL)
    return model, layer, method


def set_ede(layer, t_: float, k: float) -> None:
    with torch.no_grad():
        layer.weight_binarizer.t.fill_(t_)
        layer.weight_binarizer.k.fill_(k)


def set_act(binarizer, alpha: float, beta: float) -> None:
    with torch.no_grad():
        binarizer.alpha.fill_(alpha)
        binarizer.beta.fill_(beta)


def weight_grad(w, g, t_: float, k: float) -> torch.Tensor:
    """∂(Σ G·W_b)/∂W of the layer's binarized_weight()."""
    _, layer, _ = one_layer(t(w).view(1, -1, 1, 1))
    set_ede(layer, t_, k)
    (layer.binarized_weight() * t(g).view(1, -1, 1, 1)).sum().backward()
    return layer.weight.grad.flatten()


def activation_case(alpha: float, beta: float, x):
    """y, and per element ∂y_i/∂x_i, ∂y_i/∂β, ∂y_i/∂α of a standalone AdaBinActivation."""
    act = AdaBinActivation().to(DT)
    set_act(act, alpha, beta)
    xs = t(x).requires_grad_(True)
    y = act(xs)
    dx, dbeta, dalpha = [], [], []
    for i in range(len(x)):
        gx, ga, gb = torch.autograd.grad(y[i], (xs, act.alpha, act.beta), retain_graph=True)
        dx.append(float(gx[i]))
        dalpha.append(float(ga))
        dbeta.append(float(gb))
    return act, xs, y, t(dx), t(dbeta), t(dalpha)


CASE1_W = [[0.0, 1.0, 3.0, 4.0], [-1.5, -0.5, 0.5, 1.5]]
CASE1_ALPHA = [math.sqrt(2.5), math.sqrt(1.25)]
CASE1_WHAT = [[-1.2649111, -0.6324555, 0.6324555, 1.2649111],
              [-1.3416408, -0.4472136, 0.4472136, 1.3416408]]  # fmt: skip
CASE1_WB = [[0.4188612, 0.4188612, 3.5811388, 3.5811388],
            [-1.1180340, -1.1180340, 1.1180340, 1.1180340]]  # fmt: skip
UNBIASED_STD_CH0 = 1.8257419


def _assert_names(msg: str, *names: str) -> None:
    for n in names:
        assert re.search(rf"\b{n}\b", msg), msg


# -- the method: registration, fields, validation, modules ------------------------------------------


def test_registered_frozen_dataclass_with_defaults():
    assert "adabin" in bnnkit.list_methods()
    m = get_method("adabin")
    assert isinstance(m, AdaBin) and m.name == "adabin"
    fields = {f.name: f.default for f in dataclasses.fields(m)}
    assert fields["t_min"] == 1e-3 and fields["t_max"] == 10.0
    assert fields["progressive"] is True and fields["weights"] == "binary"
    assert m.binarizes_weights is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.t_min = 0.1  # type: ignore[misc]
    m2 = get_method({"name": "adabin", "t_min": 0.01, "t_max": 5.0, "progressive": False})
    assert (m2.t_min, m2.t_max, m2.progressive) == (0.01, 5.0, False)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"t_min": 0.0}, "t_min"),
        ({"t_min": -1e-3}, "t_min"),
        ({"t_min": 1.0, "t_max": 0.5}, "t_"),  # t_max < t_min: either field may be named
        ({"weights": "sine"}, "weights"),
    ],
)
def test_field_validation(fields, named):
    for build in (lambda: get_method("adabin", **fields),
                  lambda: get_method({"name": "adabin", **fields})):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            build()
        assert named in str(info.value), str(info.value)


def test_layer_builds_the_specified_modules():
    _, layer, _ = one_layer(torch.randn(4, 3, 3, 3, dtype=DT), padding=1)
    wb, ib, sc = layer.weight_binarizer, layer.input_binarizer, layer.scale
    assert isinstance(wb, AdaBinWeightSign) and isinstance(wb, bnnkit.binarize.EDESign)
    assert isinstance(ib, AdaBinActivation) and isinstance(ib, bnnkit.binarize.Binarizer)
    assert isinstance(sc, AdaBinAffineScale) and isinstance(sc, bnnkit.binarize.Scale)
    assert "t" in dict(wb.named_buffers()) and "k" in dict(wb.named_buffers())
    assert wb.t.ndim == 0 and wb.k.ndim == 0
    # trap 1 / trap 7: one (α, β) pair per layer, 0-d, init (1, 0): Bi-Real's sign at init
    for name, init in (("alpha", 1.0), ("beta", 0.0)):
        p = getattr(ib, name)
        assert isinstance(p, nn.Parameter) and p.requires_grad and p.ndim == 0
        assert float(p.detach()) == init
        assert any(q is p for q in layer.parameters())
    assert layer.weight_bits == 1 and layer.input_bits == 1
    with pytest.raises(NotImplementedError):
        wb.inference_shift()
    with pytest.raises(NotImplementedError):
        ib.inference_shift()


def test_standalone_modules_and_registered_activation():
    b = AdaBinWeightSign()
    assert float(b.t) == 1.0 and float(b.k) == 1.0
    b2 = AdaBinWeightSign(t=0.1, k=10.0)
    assert float(b2.t) == pytest.approx(0.1) and float(b2.k) == 10.0
    out = b2(t(CASE1_W).view(2, 4, 1, 1))
    assert torch.equal(out.flatten(1), t([[-1.0, -1.0, 1.0, 1.0]] * 2))
    act = bnnkit.binarize.get_binarizer("adabin_activation")
    assert isinstance(act, AdaBinActivation)
    assert "adabin_activation" in bnnkit.binarize.list_binarizers()


def test_float_weights_is_w32a1():
    w = torch.randn(4, 3, 3, 3, dtype=DT)
    _, layer, method = one_layer(w, padding=1, weights="float")
    assert method.binarizes_weights is False
    assert layer.weight_binarizer is None and layer.scale is None
    assert isinstance(layer.input_binarizer, AdaBinActivation)
    assert layer.weight_bits == 32 and layer.sign_history is None
    assert torch.equal(layer.binarized_weight(), w)


# -- weights: cases 1, 2, 7, 8 ------------------------------------------------------------------------


def test_case_1_per_channel_population_statistics_and_forward():
    w = t(CASE1_W).view(2, 4, 1, 1)
    _, layer, _ = one_layer(w)
    alpha, beta = layer.scale(layer.weight), layer.scale.offset(layer.weight)
    assert alpha.shape == (2, 1, 1, 1) and beta.shape == (2, 1, 1, 1)
    close(beta, [2.0, 0.0])
    close(alpha, CASE1_ALPHA)  # population std
    assert abs(float(alpha[0].detach()) - UNBIASED_STD_CH0) > 0.1  # not the unbiased std
    assert alpha.requires_grad and beta.requires_grad  # not detached
    signs = layer.weight_binarizer(layer.weight)
    assert torch.equal(signs.detach().flatten(1), t([[-1.0, -1.0, 1.0, 1.0]] * 2))
    close(layer.binarized_weight(), CASE1_WB)
    # both channels in the set {β_w − α_w, β_w + α_w}
    close(layer.scale.scale_weight(signs, layer.weight), CASE1_WB)


def test_case_2_sign_input_is_the_standardised_weight():
    _, layer, _ = one_layer(t(CASE1_W).view(2, 4, 1, 1))
    w_hat = layer.weight_binarizer.sign_input(layer.weight)
    close(w_hat, CASE1_WHAT)
    close(layer.sign_input(), CASE1_WHAT)
    assert torch.equal(ref_sign(w_hat).flatten(1), t([[-1.0, -1.0, 1.0, 1.0]] * 2))


def test_case_7_weight_tie_maps_to_plus_one():
    # β = 1, deviations [−2, −1, 0, 3], α = √3.5: the element W = 1 has ŵ = 0 exactly.
    _, layer, _ = one_layer(t([[-1.0, 0.0, 1.0, 4.0]]).view(1, 4, 1, 1))
    assert float(layer.weight_binarizer.sign_input(layer.weight).detach().flatten()[2]) == 0.0
    signs = layer.weight_binarizer(layer.weight).detach().flatten()
    assert torch.equal(signs, t([-1.0, -1.0, 1.0, 1.0]))  # no third value 0 (code's torch.sign)
    close(layer.binarized_weight(), [-0.8708287, -0.8708287, 2.8708287, 2.8708287])
    tie = float(layer.binarized_weight().detach().flatten()[2])
    assert tie != pytest.approx(1.0)  # not the code's β_w


def test_case_8_linear_weight_statistics_over_dim_1():
    _, layer, _ = one_layer(t(CASE1_W))
    assert isinstance(layer, bnnkit.nn.BinaryLinear)
    close(layer.scale.offset(layer.weight), [2.0, 0.0])
    close(layer.scale(layer.weight), CASE1_ALPHA)
    close(layer.binarized_weight(), CASE1_WB)
    assert layer.binarized_weight().shape == (2, 4)


def test_statistics_are_per_output_channel_not_per_layer():
    torch.manual_seed(2)
    w = torch.randn(3, 2, 3, 3, dtype=DT) * t([0.5, 1.0, 2.0]).view(3, 1, 1, 1)
    w = w + t([1.0, -0.5, 0.0]).view(3, 1, 1, 1)
    _, layer, _ = one_layer(w, padding=1)
    alpha, beta = ref_stats(w)
    close(layer.scale(layer.weight), alpha.flatten(), atol=1e-12)
    close(layer.scale.offset(layer.weight), beta.flatten(), atol=1e-12)
    close(layer.binarized_weight(), ref_binary_weight(w, 1.0, 1.0), atol=1e-12)
    a_layer, b_layer = ref_stats(w, per_layer=True)
    assert (layer.scale(layer.weight).flatten() - a_layer.flatten()).abs().max() > 0.1
    assert (layer.scale.offset(layer.weight).flatten() - b_layer.flatten()).abs().max() > 0.1


# -- weight gradients: cases 3, 4, 5 --------------------------------------------------------------------

CASE3_G = [1.0, 0.0, 0.0, 0.0]


def test_case_3_identity_like_ede_gradient_flows_through_the_statistics():
    got = weight_grad(CASE1_W[0], CASE3_G, 1e-8, 1e8)
    close(got, [0.9162278, -0.0418861, 0.0418861, 0.0837722])
    assert float(got.sum()) == pytest.approx(1.0, abs=TOL)
    # closed form: G − ŵ·(mean(G·ŵ) − mean(G·s)), mean(G·ŵ) = −0.5/√2.5, mean(G·s) = −0.25
    w_hat = t(CASE1_WHAT[0])
    close(got, t(CASE3_G) - w_hat * (-0.5 / math.sqrt(2.5) + 0.25))
    # detached statistics would give [1, 0, 0, 0]
    assert (got - t(CASE3_G)).abs().max() > 0.05


def test_case_3_with_the_epoch_0_schedule_values():
    got = weight_grad(CASE1_W[0], CASE3_G, 1e-3, 1e3)
    close(got, [0.9162272, -0.0418854, 0.0418862, 0.0837720])


CASE4 = {
    (1.0, 1.0): ([0.6619154, 0.2850870, 0.0782165, -0.0252188],
                 [0.1909643, -0.5525022, 1.9408026, 0.9207354]),
    (1.0, 10.0): ([0.5662278, 0.4081139, 0.0918861, -0.0662278],
                  [-0.1655245, 0.2295933, 1.0204709, 1.4154603]),
    (1e8, 1e-8): ([0.9162278, -0.0418861, 0.0418861, 0.0837722],
                  [0.6094306, -1.1952847, 2.1952847, 0.8905694]),
}  # fmt: skip


@pytest.mark.parametrize(("k", "t_"), list(CASE4))
def test_case_4_weight_gradient_table(k, t_):
    want_a, want_b = CASE4[(k, t_)]
    close(weight_grad(CASE1_W[0], [1.0, 0.0, 0.0, 0.0], t_, k), want_a)
    close(weight_grad(CASE1_W[0], [1.0, -1.0, 2.0, 0.5], t_, k), want_b)
    # the float64 reference agrees with the spec table (EDE on ŵ, through α_w and β_w)
    w = t(CASE1_W[0]).view(1, 4, 1, 1).requires_grad_(True)
    (ref_binary_weight(w, t_, k) * t([1.0, -1.0, 2.0, 0.5]).view(1, 4, 1, 1)).sum().backward()
    close(w.grad, want_b)
    if (k, t_) == (1.0, 1.0):  # e = [0.2733931, 0.6866903, 0.6866903, 0.2733931]
        close(ref_ede(t(CASE1_WHAT[0]), 1.0, 1.0), [0.2733931, 0.6866903, 0.6866903, 0.2733931])


@pytest.mark.parametrize(("t_", "k"), [(0.01, 100.0), (0.5, 1.0), (2.0, 1.0)])
def test_case_5_ede_derivative_at_zero_is_k_times_t(t_, k):
    # W = [−1, 0, 1]: ŵ = [−√1.5, 0, √1.5] exactly, G = [0, 1, 0]. By the closed form of §2.2
    # ∂L/∂W_1 = e_1 − mean(G·e) − 0 + 0·mean(G·s) + mean(G) = (2/3)·e(0) + 1/3, e(0) = k·t.
    _, layer, _ = one_layer(t([[-1.0, 0.0, 1.0]]).view(1, 3, 1, 1))
    set_ede(layer, t_, k)
    (layer.binarized_weight() * t([0.0, 1.0, 0.0]).view(1, 3, 1, 1)).sum().backward()
    assert float(layer.weight.grad.flatten()[1]) == pytest.approx(2 / 3 * k * t_ + 1 / 3, abs=TOL)


def test_weight_binarizer_alone_backpropagates_through_the_standardisation():
    # forward sign(ŵ); backward EDE on ŵ, then autograd through (W − β_w)/α_w (not detached)
    torch.manual_seed(3)
    w = torch.randn(3, 2, 3, 3, dtype=DT) + 0.4
    g = torch.randn(3, 2, 3, 3, dtype=DT)
    b = AdaBinWeightSign(t=0.75, k=1.25).to(DT)  # exact in float32 (the buffers' build dtype)
    wl = w.clone().requires_grad_(True)
    out = b(wl)
    assert torch.equal(out.detach(), ref_sign(w - w.mean(dim=(1, 2, 3), keepdim=True)))
    (out * g).sum().backward()
    wr = w.clone().requires_grad_(True)
    alpha, beta = ref_stats(wr)
    (RefEDESign.apply((wr - beta) / alpha, (wr - beta) / alpha, 0.75, 1.25) * g).sum().backward()
    torch.testing.assert_close(wl.grad, wr.grad, rtol=1e-10, atol=1e-12)
    with pytest.raises(NotImplementedError):
        b.inference_shift()


def test_affine_scale_is_differentiable_in_both_statistics():
    # d/dW Σ G·(α_w·b + β_w) for a constant b = ŵ·mean(G·b) + mean(G): the (1, 10) row of case 4
    sc = AdaBinAffineScale()
    w = t(CASE1_W[0]).view(1, 4, 1, 1).requires_grad_(True)
    b = t([-1.0, -1.0, 1.0, 1.0]).view(1, 4, 1, 1)
    out = sc.scale_weight(b, w)
    close(out, CASE1_WB[0])
    (out * t(CASE3_G).view(1, 4, 1, 1)).sum().backward()
    close(w.grad, [0.5662278, 0.4081139, 0.0918861, -0.0662278])
    w2 = t(CASE1_W[0]).view(1, 4, 1, 1).requires_grad_(True)
    sc(w2).sum().backward()  # ∂α_w/∂W = ŵ/n
    close(w2.grad, t(CASE1_WHAT[0]) / 4)
    w3 = t(CASE1_W[0]).view(1, 4, 1, 1).requires_grad_(True)
    sc.offset(w3).sum().backward()  # ∂β_w/∂W = 1/n
    close(w3.grad, [0.25] * 4)


# -- case 6: the EDE schedule ------------------------------------------------------------------------


def _two_layers(**fields):
    conv = bnnkit.nn.BinaryConv2d(3, 4, 3, padding=1, bias=False)
    lin = bnnkit.nn.BinaryLinear(5, 2, bias=False)
    model = nn.Sequential(conv, lin).to(DT)
    method = get_method("adabin", **fields)
    binarize_(model, method, filter_fn=ALL)
    layers = binary_layers(model)
    assert len(layers) == 2
    return method, layers


CASE6 = [
    (0, 400, 1e-3, 1000.0), (1, 400, 1.0232930e-3, 977.23722), (100, 400, 0.01, 100.0),
    (200, 400, 0.1, 10.0), (299, 400, 0.9772372, 1.0232930), (300, 400, 1.0, 1.0),
    (301, 400, 1.0232930, 1.0), (399, 400, 9.7723722, 1.0), (119, 120, 9.2611873, 1.0),
]  # fmt: skip


def test_case_6_progressive_schedule_is_written_into_every_layer():
    method, layers = _two_layers()
    for _, layer in layers:  # built with the epoch-0 values
        assert float(layer.weight_binarizer.t) == pytest.approx(1e-3, rel=1e-6)
        assert float(layer.weight_binarizer.k) == pytest.approx(1e3, rel=1e-6)
    for epoch, epochs, want_t, want_k in CASE6:
        assert ede_schedule(epoch, epochs, 1e-3, 10.0) == pytest.approx((want_t, want_k), rel=1e-6)
        for step in (0, 7):  # any step of the epoch: the per-epoch value
            method.on_step_start(layers, TrainState(step=step, epoch=epoch, epochs=epochs))
            for _, layer in layers:
                assert float(layer.weight_binarizer.t) == pytest.approx(want_t, rel=1e-6)
                assert float(layer.weight_binarizer.k) == pytest.approx(want_k, rel=1e-6)
    # other bounds are honoured
    method, layers = _two_layers(t_min=0.1, t_max=5.0)
    method.on_step_start(layers, TrainState(epoch=3, epochs=10))
    want = ede_schedule(3, 10, 0.1, 5.0)
    assert float(layers[0][1].weight_binarizer.t) == pytest.approx(want[0], rel=1e-6)
    assert float(layers[1][1].weight_binarizer.k) == pytest.approx(want[1], rel=1e-6)


def test_case_6_non_progressive_keeps_t_0_1_and_k_10():
    method, layers = _two_layers(progressive=False)
    for epoch in (None, 0, 200, 399):
        if epoch is not None:
            method.on_step_start(layers, TrainState(step=epoch, epoch=epoch, epochs=400))
        for _, layer in layers:
            assert float(layer.weight_binarizer.t) == pytest.approx(0.1, rel=1e-6)
            assert float(layer.weight_binarizer.k) == pytest.approx(10.0, rel=1e-6)


# -- the whole layer against the float64 reference ---------------------------------------------------


def _layer_run(t_: float, k: float, alpha: float, beta: float, training: bool = True):
    torch.manual_seed(5)
    w = torch.randn(4, 3, 3, 3, dtype=DT) * 0.3 + t([0.2, -0.1, 0.0, 0.3]).view(4, 1, 1, 1)
    model, layer, _ = one_layer(w, padding=1)
    set_ede(layer, t_, k)
    set_act(layer.input_binarizer, alpha, beta)
    model.train(training)
    x = torch.randn(2, 3, 5, 5, dtype=DT) * 0.8
    r = torch.randn(2, 4, 5, 5, dtype=DT)
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    (out * r).sum().backward()
    got = {"out": out.detach(), "w": layer.weight.grad, "x": xg.grad,
           "alpha": layer.input_binarizer.alpha.grad, "beta": layer.input_binarizer.beta.grad}  # fmt: skip
    return w, x, r, got


def _ref_run(w, x, r, t_, k, alpha, beta, weight_kw=None, act_kw=None):
    wr, xr = w.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ar, br = t(alpha).requires_grad_(True), t(beta).requires_grad_(True)
    wb = ref_binary_weight(wr, t_, k, **(weight_kw or {}))
    xb = ref_activation(xr, ar, br, **(act_kw or {}))
    out = F.conv2d(xb, wb, padding=1)  # zero padding of the binarized input
    (out * r).sum().backward()
    return {"out": out.detach(), "w": wr.grad, "x": xr.grad, "alpha": ar.grad, "beta": br.grad}


@pytest.mark.parametrize(
    ("t_", "k", "alpha", "beta"),
    [(1e-3, 1e3, 1.0, 0.0), (1.0, 1.0, 0.6, 0.3), (5.0, 1.0, 1.4, -0.45), (0.1, 10.0, -0.7, 0.2)],
)
def test_conv_layer_matches_float64_reference(t_, k, alpha, beta):
    w, x, r, got = _layer_run(t_, k, alpha, beta)
    want = _ref_run(w, x, r, t_, k, alpha, beta)
    for key in ("out", "w", "x", "alpha", "beta"):
        torch.testing.assert_close(got[key].reshape(want[key].shape), want[key],
                                   rtol=1e-9, atol=1e-10, msg=key)  # fmt: skip
    # §3.2: no batch statistics, train and eval are the same function
    _, _, _, got_eval = _layer_run(t_, k, alpha, beta, training=False)
    torch.testing.assert_close(got_eval["out"], got["out"], rtol=0, atol=1e-12)


WRONG_VARIANTS = {  # §10: each must change a value the reference test checks
    "unbiased std (trap 1)": ({"unbiased": True}, None, ("out", "w")),
    "detached statistics (trap 3)": ({"detach": True}, None, ("w",)),
    "per-layer statistics (trap 1)": ({"per_layer": True}, None, ("out", "w")),
    "EDE on W, not ŵ (trap 4)": ({"ede_on_w": True}, None, ("w",)),
    "centre β_a, not α_a·β_a (trap 5)": (None, {"centre_beta": True}, ("out", "alpha")),
    "no dense α_a term in ∂L/∂β_a (trap 6)": (None, {"dense_beta": False}, ("beta",)),
}


@pytest.mark.parametrize("variant", list(WRONG_VARIANTS))
def test_wrong_variants_of_the_spec_are_rejected(variant):
    weight_kw, act_kw, keys = WRONG_VARIANTS[variant]
    args = (1.0, 1.0, 0.6, 0.3)
    w, x, r, got = _layer_run(*args)
    right = _ref_run(w, x, r, *args)
    wrong = _ref_run(w, x, r, *args, weight_kw=weight_kw, act_kw=act_kw)
    for key in keys:
        g = got[key].reshape(right[key].shape)
        torch.testing.assert_close(g, right[key], rtol=1e-9, atol=1e-10)
        assert not torch.allclose(g, wrong[key], rtol=1e-4, atol=1e-6), (variant, key)


# -- activations: cases 9-12 ---------------------------------------------------------------------------


def test_case_9_activation_at_init_is_bireal():
    act, xs, y, dx, dbeta, dalpha = activation_case(1.0, 0.0, [-1.5, -0.5, 0.3, 1.0])
    close(y, [-1.0, -1.0, 1.0, 1.0])
    close(dx, [0.0, 1.0, 1.4, 0.0])
    close(dbeta, [1.0, 0.0, -0.4, 1.0])
    close(dalpha, [-1.0, -0.5, 0.58, 1.0])
    y.sum().backward()
    assert float(act.beta.grad) == pytest.approx(1.6, abs=TOL)
    assert float(act.alpha.grad) == pytest.approx(0.08, abs=TOL)
    close(xs.grad, [0.0, 1.0, 1.4, 0.0])


def test_case_10_offset_centre_is_alpha_times_beta_and_beta_grad_is_dense():
    act, xs, y, dx, dbeta, dalpha = activation_case(0.5, 0.25, [-1.0, 0.0, 0.5, 2.0])
    close(act.sign_input(xs), [-2.5, -0.5, 0.5, 3.5])
    close(y, [-0.375, -0.375, 0.625, 0.625])  # {α(β − 1), α(β + 1)}
    lo, hi = float(y.detach().min()), float(y.detach().max())
    assert (lo + hi) / 2 == pytest.approx(0.125, abs=TOL)  # centre α·β
    assert (lo + hi) / 2 != pytest.approx(0.25, abs=1e-3)  # not β
    close(dx, [0.0, 1.0, 1.0, 0.0])
    close(dbeta, [0.5, -0.5, -0.5, 0.5])  # α − F'; without the dense term: [0, −1, −1, 0]
    close(dalpha, [-0.75, -0.25, 0.75, 1.25])  # s + β − x'·F'
    y.sum().backward()
    assert float(act.beta.grad) == pytest.approx(0.0, abs=TOL)
    assert float(act.alpha.grad) == pytest.approx(1.0, abs=TOL)


def test_case_11_activation_tie_maps_to_the_upper_value():
    _, _, y, dx, dbeta, dalpha = activation_case(0.5, 0.25, [0.25])
    # bnnkit's sign(0) = +1: α(1 + β) = 0.625 (the code's torch.sign gives α·β = 0.125)
    assert float(y[0].detach()) == pytest.approx(0.625, abs=TOL)
    close(dx, [2.0])
    close(dbeta, [-1.5])
    close(dalpha, [1.25])  # the code: 0.25


def test_case_12_negative_alpha_is_decreasing():
    act, xs, y, dx, dbeta, dalpha = activation_case(-0.5, 0.25, [1.0, -1.0])
    close(act.sign_input(xs), [-1.5, 2.5])
    close(y, [0.375, -0.625])
    close(dx, [0.0, 0.0])
    close(dbeta, [-0.5, -0.5])
    close(dalpha, [-0.75, 1.25])


def test_activation_matches_reference_on_a_4d_input():
    torch.manual_seed(8)
    act = AdaBinActivation().to(DT)
    set_act(act, 0.8, 0.35)
    x = torch.randn(2, 3, 4, 4, dtype=DT)
    g = torch.randn(2, 3, 4, 4, dtype=DT)
    xg = x.clone().requires_grad_(True)
    out = act(xg)
    (out * g).sum().backward()
    xr = x.clone().requires_grad_(True)
    ar, br = t(0.8).requires_grad_(True), t(0.35).requires_grad_(True)
    ref = ref_activation(xr, ar, br)
    (ref * g).sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(act.alpha.grad, ar.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(act.beta.grad, br.grad, rtol=1e-10, atol=1e-12)
    vals = sorted(set(round(v, 9) for v in out.flatten().tolist()))
    assert vals == [round(0.8 * (0.35 - 1), 9), round(0.8 * (0.35 + 1), 9)]


# -- Maxout: case 13 ----------------------------------------------------------------------------------


def test_case_13_maxout():
    m = bnnkit.nn.Maxout(2).to(DT)
    assert torch.equal(m.pos_scale.detach(), t([1.0, 1.0]))
    assert torch.equal(m.neg_scale.detach(), t([0.25, 0.25]))
    assert m.pos_scale.shape == (2,) and m.neg_scale.shape == (2,)
    with torch.no_grad():
        m.pos_scale.copy_(t([1.0, 2.0]))
        m.neg_scale.copy_(t([0.25, -0.5]))
    x = t([[-2.0, 0.0, 3.0], [-2.0, 0.0, 3.0]]).view(1, 2, 1, 3).requires_grad_(True)
    y = m(x)
    close(y, [[-0.5, 0.0, 3.0], [1.0, 0.0, 6.0]])
    close(y, ref_maxout(x.detach(), m.pos_scale.detach(), m.neg_scale.detach()))
    y.sum().backward()
    close(x.grad, [[0.25, 0.0, 1.0], [-0.5, 0.0, 2.0]])
    close(m.pos_scale.grad, [3.0, 3.0])
    close(m.neg_scale.grad, [-2.0, -2.0])


# -- layer: cases 14, 16 --------------------------------------------------------------------------------


def test_case_14_full_conv_with_zero_padded_border():
    model, layer, _ = one_layer(t([[[[0.0, 1.0, 5.0]]]]), padding=(0, 1))
    set_act(layer.input_binarizer, 0.5, 0.25)
    a_w = math.sqrt(14 / 3)
    assert float(layer.scale(layer.weight).detach()) == pytest.approx(2.1602469, abs=TOL)
    assert float(layer.scale.offset(layer.weight).detach()) == pytest.approx(2.0, abs=TOL)
    close(layer.binarized_weight(), [-0.1602469, -0.1602469, 4.1602469])
    x = t([[[[-1.0, 0.5, 2.0]]]])
    close(layer.binarized_input(x), [-0.375, 0.625, 0.625])
    y = model(x)
    close(y, [2.6602469, 2.5600926, -0.2003086])
    close(y, [a_w + 0.5, 0.375 * a_w + 1.75, -1.25 * a_w + 2.5])  # the T1..T4 split of §7.1
    # padding with a value of the binary set (±1 or c_a ± d_a) would change the border outputs
    xb = layer.binarized_input(x)
    wb = layer.binarized_weight()
    padded = F.conv2d(F.pad(xb, (1, 1), value=0.625), wb)
    assert (padded.flatten()[[0, 2]] - y.flatten()[[0, 2]]).abs().min() > 0.05


@pytest.mark.parametrize("pad", [1, -1])
def test_case_16_pad_value_plus_minus_one_is_refused(pad):
    model = nn.Sequential(bnnkit.nn.BinaryConv2d(3, 4, 3, padding=1, bias=False))
    with pytest.raises(ConfigError):
        binarize_(model, "adabin", filter_fn=ALL, pad_value=pad)
    model = nn.Sequential(bnnkit.nn.BinaryConv2d(3, 4, 3, padding=1, bias=False))
    binarize_(model, "adabin", filter_fn=ALL)
    layer = model[0]
    assert layer.pad_value == 0.0
    with pytest.raises(ConfigError):
        layer.pad_value = pad
    binarize_(nn.Sequential(bnnkit.nn.BinaryConv2d(3, 4, 3, padding=1)), "adabin",
              filter_fn=ALL, pad_value=0)  # fmt: skip


# -- export: case 15 -------------------------------------------------------------------------------------


def _adabin_resnet20() -> nn.Module:
    torch.manual_seed(0)
    return binarize_(bnnkit.create_model("resnet20", variant="adabin"), "adabin")


def test_case_15_export_refuses_naming_the_first_binary_layer():
    model = _adabin_resnet20()
    first = binary_layers(model)[0][0]
    with pytest.raises(bnnkit.export.ExportError) as info:
        bnnkit.export.convert(model)
    msg = str(info.value)
    assert f"'{first}'" in msg, msg
    assert "affine" in msg.lower() or "adabin" in msg.lower(), msg


def test_case_15_export_refuses_a_symmetric_weight_too():
    # β_w = 0 in every channel (as channel 1 of case 1): the input binarizer still refuses
    w = t([[-1.5, -0.5, 0.5, 1.5], [1.0, -1.0, 2.0, -2.0]], torch.float32).view(2, 4, 1, 1)
    model, layer, _ = one_layer(w, name="sym")
    model.float()
    close(layer.scale.offset(layer.weight), [0.0, 0.0])
    with pytest.raises(bnnkit.export.ExportError) as info:
        bnnkit.export.convert(model)
    msg = str(info.value)
    assert "'sym'" in msg and ("affine" in msg.lower() or "adabin" in msg.lower()), msg


# -- contract: cases 17, 18, 19; metrics ------------------------------------------------------------------


def test_case_17_resnet20_parameter_counts():
    model = _adabin_resnet20()
    layers = binary_layers(model)
    assert len(layers) == 18
    assert all(isinstance(m.input_binarizer, AdaBinActivation) for _, m in layers)
    assert all(isinstance(m.weight_binarizer, AdaBinWeightSign) for _, m in layers)
    pairs = [(m.input_binarizer.alpha, m.input_binarizer.beta) for _, m in layers]
    assert len({id(p) for pair in pairs for p in pair}) == 36
    maxouts = [m for m in model.modules() if isinstance(m, bnnkit.nn.Maxout)]
    assert sum(p.numel() for m in maxouts for p in m.parameters()) == 1376
    assert sum(p.numel() for p in model.parameters()) == 271_262


def test_case_17_weight_decay_reaches_alpha_beta_and_maxout_slopes():
    model = _adabin_resnet20()
    method = get_method("adabin")
    groups = param_groups(model, method, OptimizerConfig(weight_decay=1e-4, decay_rule="all"))
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert len(wd) == sum(1 for _ in model.parameters())  # every parameter is optimized
    targets = [m.input_binarizer.alpha for _, m in binary_layers(model)]
    targets += [m.input_binarizer.beta for _, m in binary_layers(model)]
    targets += [p for m in model.modules() if isinstance(m, bnnkit.nn.Maxout)
                for p in m.parameters()]  # fmt: skip
    assert len(targets) == 36 + 38
    assert all(wd[id(p)] == 1e-4 for p in targets)
    assert all(v == 1e-4 for v in wd.values())  # decay_rule all: BN included


def test_case_18_sign_history_follows_the_moving_centre():
    model, layer, _ = one_layer(t([[0.0, 1.0, 3.0, 4.0]]).view(1, 4, 1, 1))
    h = layer.sign_history
    assert h is not None
    assert torch.equal(h.negative.flatten(), torch.tensor([True, True, False, False]))
    with torch.no_grad():
        layer.weight.copy_(t([[0.0, 1.0, 3.0, 9.0]]).view(1, 4, 1, 1))
    close(layer.scale.offset(layer.weight), [3.25])
    close(layer.scale(layer.weight), [3.4910600])
    close(layer.sign_input(), [-0.9309493, -0.6445034, -0.0716115, 1.6470642])
    bnnkit.nn.update_sign_history(model)
    assert torch.equal(h.negative.flatten(), torch.tensor([True, True, True, False]))
    # one flip, at index 2, whose latent value 3 did not move (sign(W) would show none)
    assert torch.equal(h.flipped.flatten(), torch.tensor([False, False, True, False]))


def test_case_19_composition():
    with pytest.raises(ConfigError):
        get_method("adabin", base="recu")
    with pytest.raises(ConfigError):
        get_method({"name": "adabin", "base": "ste"})
    composed = get_method("ovsw", base="adabin")
    assert [p.name for p in composed.parts()] == ["adabin", "ovsw"]
    model = nn.Sequential(bnnkit.nn.BinaryConv2d(3, 4, 3, padding=1, bias=False)).to(DT)
    binarize_(model, composed, filter_fn=ALL)
    layer = model[0]
    assert isinstance(layer.weight_binarizer, AdaBinWeightSign)
    assert isinstance(layer.input_binarizer, AdaBinActivation)
    assert layer.sign_history is not None
    for build in (lambda: get_method("rebnn", base="adabin"),
                  lambda: get_method({"name": "rebnn", "base": {"name": "adabin"}})):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            build()
        _assert_names(str(info.value), "rebnn", "adabin")
    with pytest.raises(ConfigError):  # the W32A1 base keeps its weights float
        get_method({"name": "ovsw", "base": {"name": "adabin", "weights": "float"}})


def test_after_optimizer_step_metrics():
    c0 = bnnkit.nn.BinaryConv2d(4, 2, 1, bias=False)
    c1 = bnnkit.nn.BinaryConv2d(2, 2, 1, bias=False)
    model = nn.Sequential(c0, c1).to(DT)
    with torch.no_grad():
        c0.weight.copy_(t(CASE1_W).view(2, 4, 1, 1))  # |β|/α = [2/√2.5, 0]
        c1.weight.copy_(t([[1.0, 3.0], [-1.0, 1.0]]).view(2, 2, 1, 1))  # |β|/α = [2, 0]
    method = get_method("adabin")
    binarize_(model, method, filter_fn=ALL)
    set_act(c0.input_binarizer, 0.5, 0.2)
    set_act(c1.input_binarizer, 1.5, -0.6)
    layers = binary_layers(model)
    state = TrainState(step=3, epoch=200, epochs=400)
    method.on_step_start(layers, state)
    metrics = method.after_optimizer_step(layers, state)
    want = {
        "adabin/t": 0.1,
        "adabin/alpha_a_mean": 1.0,
        "adabin/beta_a_mean": -0.2,
        "adabin/beta_w_over_alpha_w": (2 / math.sqrt(2.5) + 2.0) / 4,
    }
    assert set(want) <= set(metrics), sorted(metrics)
    for key, value in want.items():
        assert isinstance(metrics[key], torch.Tensor) and metrics[key].ndim == 0, key
        assert float(metrics[key].detach()) == pytest.approx(value, abs=TOL), key


# -- models ----------------------------------------------------------------------------------------------


@pytest.fixture
def no_hardtanh(monkeypatch):
    """Counts F.hardtanh calls (nn.Hardtanh goes through it too)."""
    calls = []
    real = F.hardtanh

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "hardtanh", counting)
    return calls


def test_resnet20_variant_structure_maxout_everywhere_no_hardtanh(no_hardtanh):
    model = _adabin_resnet20()
    maxouts = [m for m in model.modules() if isinstance(m, bnnkit.nn.Maxout)]
    assert len(maxouts) == 1 + 2 * 9  # stem + one after each residual add
    assert maxouts[0].pos_scale.numel() == 16  # the stem's, registered first
    for m in maxouts:  # trap 7: PReLU(0.25) at init, both slopes learnable
        assert bool((m.pos_scale == 1.0).all()) and bool((m.neg_scale == 0.25).all())
        assert m.pos_scale.requires_grad and m.neg_scale.requires_grad
    assert not any(isinstance(m, nn.Hardtanh) for m in model.modules())
    x = sample_input("resnet20").to(DT)
    model.to(DT).train()
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert not no_hardtanh, f"F.hardtanh called {len(no_hardtanh)} times"
    for _, layer in binary_layers(model):
        assert layer.pad_value == 0.0
        assert layer.weight.grad is not None and layer.input_binarizer.beta.grad is not None


def test_resnet20_option_a_shortcut_subsamples():
    model = bnnkit.create_model("resnet20", variant="adabin")
    name = next(n for n, m in binary_layers(model) if tuple(m.stride) == (2, 2))
    block = model.get_submodule(name.rpartition(".")[0])
    with torch.no_grad():  # the conv branches contribute exactly 0: the block is its shortcut
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.zero_()
                m.bias.zero_()
    block.eval()
    x = torch.rand(2, 16, 8, 8) + 0.1  # positive: Maxout (p = 1) passes it unchanged
    with torch.no_grad():
        out = block(x)
    want = torch.zeros(2, 32, 4, 4)
    want[:, 8:24] = x[:, :, ::2, ::2]
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    avg = torch.zeros(2, 32, 4, 4)
    avg[:, 8:24] = F.avg_pool2d(x, 2)
    assert (out - avg).abs().max() > 0.05  # not ReCU's AvgPool2d option A


def test_resnet20_variant_init_is_kaiming_normal_fan_in_linear_included():
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20", variant="adabin")
    fc = [m for m in model.modules() if type(m) is nn.Linear][-1]
    assert fc.in_features == 64
    # kaiming_normal_ std √(2/64) = 0.177; nn.Linear's default init has std 0.072
    assert float(fc.weight.detach().std()) == pytest.approx(math.sqrt(2 / 64), rel=0.15)
    conv = next(m for _, m in binary_layers(model) if tuple(m.stride) == (2, 2))  # 16 -> 32
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / (9 * 16)), rel=0.07)


@pytest.mark.parametrize(
    ("name", "convs"),
    [("resnet18_cifar", 16), ("vgg_small", 5), ("resnet18", 16), ("resnet34", 32)],
)
def test_other_adabin_variants(name, convs, no_hardtanh):
    torch.manual_seed(0)
    model = bnnkit.create_model(name, variant="adabin", num_classes=10)
    binarize_(model, "adabin")
    layers = binary_layers(model)
    assert len(layers) == convs
    assert all(isinstance(m, bnnkit.nn.BinaryConv2d) and m.kernel_size == (3, 3) for _, m in layers)
    assert all(isinstance(m.input_binarizer, AdaBinActivation) for _, m in layers)
    assert any(isinstance(m, bnnkit.nn.Maxout) for m in model.modules())
    assert not any(isinstance(m, nn.Hardtanh) for m in model.modules())
    model.eval()
    with torch.no_grad():
        out = model(sample_input(name))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert not no_hardtanh, f"F.hardtanh called {len(no_hardtanh)} times"
    if name in ("resnet18", "resnet34"):
        # §4.4: N(0, 2/(k²·C_out)) conv init, BN γ = 1 (not 1e-8)
        first_s2 = next(m for _, m in layers if tuple(m.stride) == (2, 2))
        want = math.sqrt(2 / (9 * first_s2.out_channels))
        assert float(first_s2.weight.detach().std()) == pytest.approx(want, rel=0.05)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(bool((m.weight == 1.0).all()) for m in bns)
    if name == "resnet18_cifar":  # §4.3: PyTorch default init (kaiming_uniform, a = √5)
        first_s2 = next(m for _, m in layers if tuple(m.stride) == (2, 2))
        want = 1 / math.sqrt(3 * 9 * first_s2.in_channels)
        assert float(first_s2.weight.detach().std()) == pytest.approx(want, rel=0.07)
