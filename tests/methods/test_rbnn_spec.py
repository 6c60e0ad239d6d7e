"""RBNN (Lin et al., NeurIPS 2020), per equation, against the hand values of
``docs/specs/rbnn.md`` §11 (cases 1-24) and an independent float64 reference written here from
§2-§5 (no code shared with the implementation).

Spec lines tested:

* §2.1 weights standardised per output channel, unbiased std, no eps, differentiable (cases 2, 9).
* §2.2 get_ab: a = the largest divisor of n with a ≤ floor(√n), b = n/a (case 1); X = w2
  viewed row-major as (O, a, b), X[o, r, c] = w2_flat[o, r·b + c] (case 2, trap 8).
* §2.3 bi-rotation Rw_o = R1ᵀ·X_o·R2 (Kronecker form, norm kept; case 3); blend
  w3 = w2 + |sin θ|·(sg(Rw) − w2), θ of shape (O, 1, ..., 1), init π/2 (case 4, trap 3);
  b_w = sign(w3) with sign(0) = +1.
* §2.4 α = mean|W| per channel at binarize_ time, shape (O,), multiplies the binary weight
  (cases 4, 19, 20).
* §2.5 backward: k·max(0, √2·t − t²·|w3|) (case 5); ∂w3/∂w2 = 1 − |sin θ| (nothing through
  R); ∂L/∂θ = sign(sin θ)·cos θ·Σ g3·(Rw − w2); exactly zero latent gradient at θ = π/2 in
  float64 and float32 (cases 9, 10, trap 4).
* §3.1 the refresh runs once per epoch, at the first step, before its forward, epoch 0 included,
  every rotation_every epochs, never in eval, not again on a mid-epoch resume, in place
  (case 18, traps 9, 10).
* §3.2 the alternating B / R1 / R2 steps (R1 = polar(D1ᵀ) with the old R2, R2 = polar(D2) with
  the new R1, B once per iteration), J non-increasing, orthogonality (cases 11-17, traps 6, 7).
* §4 activations: per-sample (C, H, W) standardisation, unbiased, no eps, differentiable, in
  training and eval; backward max(0, √2·t' − t'²|a2|), t' = max(t, 1), k = 1 (cases 6, 8, 21,
  traps 1, 2, 11); center_inputs=False divides by the std only (§10.1).
* §5 t(e) = 10^(log T_min + (log T_max − log T_min)·e/E), k = max(1/t, 1) (case 7, trap 12).
* §6 / §10.5 models: ResNet-20 Bi-Real blocks, option A by subsampling, kaiming on convs and the
  Linear, BN2d γ = 1e-8; CIFAR ResNet-18 with binary 1×1 shortcuts, BN1d head, default init
  (trap 14); §7 / §10.5 recipes (wd 1e-4 on every parameter, decay_rule all; trap 5).
* §9 / §10.6 export: refused with the per-sample centring, allowed with center_inputs=False,
  packed bits are sign(w3) (case 20); §10.3 metrics, properties, param groups (case 22);
  sign history on sign(w3) (trap 20); composition (case 23); field validation (case 24).
* §12 traps 1, 3, 6, 7, 11: each wrong variant (biased std, eps, detached statistics, Rw not
  detached, sin θ, R1·X·R2ᵀ, unclamped t / k ≠ 1 for activations, V-vs-Vh, R1/R2 order) is shown
  to change a checked value.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import OrderedDict

import pytest
import torch
from _helpers import events, ref_sign
from torch import nn
from torch.nn import functional as F

import bnnkit
import bnnkit.binarize
import bnnkit.export
import bnnkit.methods
import bnnkit.nn
from bnnkit.binarize import rbnn_grad, rbnn_sign
from bnnkit.config import OptimizerConfig, load_recipe
from bnnkit.errors import ConfigError
from bnnkit.methods import TrainState, binarize_, binary_layers, get_method
from bnnkit.methods.irnet import ede_schedule
from bnnkit.methods.rbnn import RBNN, RBNNActSign, RBNNWeightSign, get_ab, rotation_update
from bnnkit.runs import train
from bnnkit.training import build_optimizer
from bnnkit.training.optim import param_groups

DT = torch.float64
TOL = 1e-7
SQ2 = math.sqrt(2.0)
PI = math.pi


def t(values, dtype=DT) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def close(got: torch.Tensor, want, atol: float = TOL) -> None:
    want = want if isinstance(want, torch.Tensor) else t(want)
    torch.testing.assert_close(got.detach().to(DT).reshape(want.shape), want, rtol=0, atol=atol)


def Q(phi: float) -> torch.Tensor:
    """The rotation [[cos φ, −sin φ], [sin φ, cos φ]]."""
    c, s = math.cos(phi), math.sin(phi)
    return t([[c, -s], [s, c]])


H = t([[1.0, 1.0], [1.0, -1.0]])
H2 = t([[1.0, -1.0], [1.0, 1.0]])  # H′
I2 = torch.eye(2, dtype=DT)


def haar(n: int, seed: int) -> torch.Tensor:
    """A Haar-random orthogonal n×n matrix (QR of a Gaussian, signs of diag(R) folded in)."""
    g = torch.randn(n, n, dtype=DT, generator=torch.Generator().manual_seed(seed))
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


# -- an independent reference, written from the spec (§2-§5) ---------------------------------------


def ref_grad(x: torch.Tensor, t_: float, k: float) -> torch.Tensor:
    """§2.5: k·max(0, √2·t − t²·|x|)."""
    return k * torch.clamp(SQ2 * t_ - t_ * t_ * x.abs(), min=0.0)


class RefRBNNSign(torch.autograd.Function):
    """Forward sign (sign(0) = +1); backward g·k·max(0, √2·t − t²·|x|)."""

    @staticmethod
    def forward(ctx, x, t_, k):
        ctx.save_for_backward(x)
        ctx.t, ctx.k = t_, k
        return ref_sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ref_grad(x, ctx.t, ctx.k), None, None


def ref_get_ab(n: int) -> tuple[int, int]:
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def ref_std(c: torch.Tensor, dims, unbiased: bool, eps: float) -> torch.Tensor:
    """Std of the already centred c over dims (divisor n − 1 or n), plus eps under the root."""
    n = math.prod(c.shape[d] for d in dims)
    var = (c * c).sum(dim=dims, keepdim=True) / (n - 1 if unbiased else n)
    return torch.sqrt(var + eps)


def ref_w2(w: torch.Tensor, *, unbiased=True, eps=0.0, detach=False) -> torch.Tensor:
    """§2.1: (W − mean_o)/std_o per output channel."""
    dims = tuple(range(1, w.ndim))
    mu = w.mean(dim=dims, keepdim=True)
    sd = ref_std(w - mu, dims, unbiased, eps)
    if detach:
        mu, sd = mu.detach(), sd.detach()
    return (w - mu) / sd


def ref_rotate(w2: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, convention="R1T_X_R2"):
    """§2.3: R1ᵀ·X_o·R2 for every channel of the row-major (O, a, b) view, back to W's shape."""
    a, b = r1.shape[0], r2.shape[0]
    x = w2.reshape(w2.shape[0], a, b)
    rw = r1.T @ x @ r2 if convention == "R1T_X_R2" else r1 @ x @ r2.T
    return rw.reshape(w2.shape)


def ref_w3(w, r1, r2, theta, *, unbiased=True, eps=0.0, detach_stats=False, detach_rot=True,
           abs_sin=True, convention="R1T_X_R2") -> torch.Tensor:  # fmt: skip
    """§2.3: w3 = w2 + |sin θ|·(sg(Rw) − w2) (or one of the wrong variants of §12)."""
    w2 = ref_w2(w, unbiased=unbiased, eps=eps, detach=detach_stats)
    rw = ref_rotate(w2, r1, r2, convention)
    if detach_rot:
        rw = rw.detach()
    s = torch.sin(theta).abs() if abs_sin else torch.sin(theta)
    return w2 + s * (rw - w2)


def ref_weight_sign(w, r1, r2, theta, t_, k, **variant) -> torch.Tensor:
    return RefRBNNSign.apply(ref_w3(w, r1, r2, theta, **variant), t_, k)


def ref_act(x: torch.Tensor, t_: float, *, center=True, unbiased=True, eps=0.0, detach=False,
            clamp=True, k=1.0, stats="sample") -> torch.Tensor:  # fmt: skip
    """§4: sign((x − mean_n)/std_n), per sample over (C, H, W); backward max(0, √2 t' − t'²|x2|),
    t' = max(t, 1), k = 1 (or one of the wrong variants of §12)."""
    dims = {"sample": tuple(range(1, x.ndim)), "channel": (2, 3), "batch": tuple(range(x.ndim))}
    dims = dims[stats]
    mu = x.mean(dim=dims, keepdim=True)
    sd = ref_std(x - mu, dims, unbiased, eps)  # the std of x (centred inside, as torch.std)
    if detach:
        mu, sd = mu.detach(), sd.detach()
    x2 = (x - mu) / sd if center else x / sd
    return RefRBNNSign.apply(x2, max(t_, 1.0) if clamp else t_, k)


def J(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, b: torch.Tensor | None = None):
    """§3.2 objective Σ_o ‖B_o − R1ᵀ X_o R2‖² (B = sign(R1ᵀ X R2) when not given)."""
    v = r1.T @ x @ r2
    b = ref_sign(v) if b is None else b
    return float(((b - v) ** 2).sum())


def polar(m: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(m)
    return u @ vh


def ref_rotation_update(x, r1, r2, iters, variant=None, trace=None):
    """§3.2 with per-channel loops (the official code's form); ``trace`` collects J after every
    sub-step. Variants are the wrong readings of traps 6 and 7."""
    r1, r2 = r1.clone(), r2.clone()
    for _ in range(iters):
        b = ref_sign(r1.T @ x @ r2)  # B-step, once per iteration
        if trace is not None:
            trace.append(J(x, r1, r2, b))

        def r1_step(r1, r2, b):
            d1 = sum(b[o] @ r2.T @ x[o].T for o in range(x.shape[0]))
            u, _, vh = torch.linalg.svd(d1)
            return vh @ u.T if variant == "vh_as_v" else (u @ vh).T  # torch.svd: V1·U1ᵀ

        def r2_step(r1, r2, b):
            d2 = sum(x[o].T @ r1 @ b[o] for o in range(x.shape[0]))
            u, _, vh = torch.linalg.svd(d2)
            return u @ vh.T if variant == "vh_as_v" else u @ vh

        if variant == "r2_first":  # R1 and R2 steps swapped
            r2 = r2_step(r1, r2, b)
            r1 = r1_step(r1, r2, b)
            continue
        old_r1 = r1
        r1 = r1_step(r1, r2, b)
        if trace is not None:
            trace.append(J(x, r1, r2, b))
        if variant == "b_after_r1":
            b = ref_sign(r1.T @ x @ r2)
        r2 = r2_step(old_r1 if variant == "r2_old_r1" else r1, r2, b)
        if trace is not None:
            trace.append(J(x, r1, r2, b))
    return r1, r2


# -- helpers --------------------------------------------------------------------------------------


def ALL(module: nn.Module, name: str) -> bool:
    return True


def set_rot(b: RBNNWeightSign, r1, r2) -> None:
    with torch.no_grad():
        b.R1.copy_(r1)
        b.R2.copy_(r2)


def set_theta(b: RBNNWeightSign, values) -> None:
    v = torch.as_tensor(values, dtype=b.theta.dtype)
    with torch.no_grad():
        b.theta.copy_(v.reshape(b.theta.shape) if v.numel() > 1 else v.expand(b.theta.shape))


def set_tk(b: nn.Module, t_: float, k: float | None = None) -> None:
    with torch.no_grad():
        b.t.fill_(t_)
        if k is not None:
            b.k.fill_(k)


def weight_sign(w: torch.Tensor, r1=None, r2=None, theta=None, t_=1.0, k=1.0) -> RBNNWeightSign:
    b = RBNNWeightSign(tuple(w.shape)).to(w.dtype)
    if r1 is not None:
        set_rot(b, r1, r2)
    if theta is not None:
        set_theta(b, theta)
    set_tk(b, t_, k)
    return b


def one_layer(w: torch.Tensor, padding=0, name: str = "0", dtype=DT, **fields):
    """A one-layer Sequential (BinaryConv2d for 4-D w, BinaryLinear for 2-D) under rbnn."""
    if w.ndim == 4:
        cout, cin, kh, kw = w.shape
        layer = bnnkit.nn.BinaryConv2d(cin, cout, (kh, kw), padding=padding, bias=False)
    else:
        layer = bnnkit.nn.BinaryLinear(w.shape[1], w.shape[0], bias=False)
    model = nn.Sequential(OrderedDict([(name, layer)])).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
    method = get_method("rbnn", **fields)
    binarize_(model, method, filter_fn=ALL)
    return model, layer, method


W4 = [1.0, 2.0, 4.0, 7.0]  # case 2
W2_CASE2 = [-0.94491118, -0.56694671, 0.18898224, 1.32287566]
RW_CASE4 = [-0.39129762, 0.63234689, 1.46034258, 0.56073445]
R1_16, R2_16 = Q(PI / 6), Q(PI / 4)


def w4() -> torch.Tensor:
    return t(W4).view(1, 4, 1, 1)


# -- the surrogate: cases 5, 6 ----------------------------------------------------------------------

CASE5 = {
    (0.01, 100.0): ([0.0, 1.0, -100.0, SQ2 / 0.01], [1.41421356, 1.40421356, 0.41421356, 0.0]),
    (1.0, 1.0): ([0.0, 0.2, 0.5, 1.0, SQ2, 1.5],
                 [1.41421356, 1.21421356, 0.91421356, 0.41421356, 0.0, 0.0]),
    (10.0, 1.0): ([0.0, 0.05, 0.1, 0.14142136, 0.2],
                  [14.14213562, 9.14213562, 4.14213562, 0.0, 0.0]),
    (10**-0.5, 10**0.5): ([0.0, 1.0, 1.5, SQ2 / 10**-0.5],
                          [1.41421356, 1.09798580, 0.93987191, 0.0]),
}  # fmt: skip


@pytest.mark.parametrize(("t_", "k"), list(CASE5))
def test_case_5_weight_surrogate_table(t_, k):
    x, want = CASE5[(t_, k)]
    close(rbnn_grad(t(x), t_, k), want, atol=1e-7)
    close(rbnn_grad(t(x), t(t_), t(k)), want, atol=1e-7)  # 0-d tensors
    close(ref_grad(t(x), t_, k), want, atol=1e-7)
    xs = t(x).requires_grad_(True)
    g = t([2.0, -1.0, 0.5, 3.0, 1.0, -2.0][: len(x)])
    out = rbnn_sign(xs, torch.tensor(t_), torch.tensor(k))
    (out * g).sum().backward()
    close(xs.grad, g * t(want), atol=1e-6)
    # the support ends at √2/t; the peak is k·√2·t
    assert float(rbnn_grad(t([1.0001 * SQ2 / t_]), t_, k)) == 0.0
    assert float(rbnn_grad(t([0.0]), t_, k)) == pytest.approx(k * SQ2 * t_, rel=1e-12)


def test_case_5_boundary_is_exactly_zero_and_forward_is_bnnkit_sign():
    assert float(rbnn_grad(t([SQ2, -SQ2]), 1.0, 1.0).abs().max()) == 0.0
    x = t([-2.0, -0.0, 0.0, 1e-30, 3.0]).requires_grad_(True)
    out = rbnn_sign(x, 1.0, 1.0)
    assert out.dtype == DT
    assert torch.equal(out.detach(), t([-1.0, 1.0, 1.0, 1.0, 1.0]))  # sign(0) = +1
    assert torch.equal(out.detach(), ref_sign(x.detach()))


@pytest.mark.parametrize(
    ("t_", "x", "want"),
    [
        (0.01, [0.0, 0.5, -0.5, 1.2, SQ2], [1.41421356, 0.91421356, 0.91421356, 0.21421356, 0.0]),
        (0.5, [0.0, 0.5, -0.5, 1.2, SQ2], [1.41421356, 0.91421356, 0.91421356, 0.21421356, 0.0]),
        (1.0, [0.0, 0.5, -0.5, 1.2, SQ2], [1.41421356, 0.91421356, 0.91421356, 0.21421356, 0.0]),
        (2.0, [0.0, 0.5, -0.5, 0.70710678, 1.2], [2.82842712, 0.82842712, 0.82842712, 0.0, 0.0]),
        (10.0, [0.0, 0.5], [14.14213562, 0.0]),
    ],
)
def test_case_6_activation_surrogate_clamps_t_to_one_with_k_one(t_, x, want):
    close(rbnn_grad(t(x), max(t_, 1.0), 1.0), want)
    if t_ < 1.0:  # without the clamp (t = 0.01, k = 1) the peak would be 0.01414214: wrong
        assert abs(float(rbnn_grad(t([0.0]), t_, 1.0)) - want[0]) > 0.5


# -- the schedule: case 7 ---------------------------------------------------------------------------

CASE7 = [
    (1000, 0, 0.01, 100.0), (1000, 1, 0.010069317, 99.311605), (1000, 100, 0.019952623, 50.118723),
    (1000, 500, 0.31622777, 3.1622777), (1000, 666, 0.99540542, 1.0046158),
    (1000, 667, 1.0023052, 1.0), (1000, 999, 9.9311605, 1.0), (150, 0, 0.01, 100.0),
    (150, 50, 0.1, 10.0), (150, 100, 1.0, 1.0), (150, 149, 9.5499259, 1.0),
]  # fmt: skip


def _conv_model(cin=4, cout=6, dtype=DT, **fields):
    model = nn.Sequential(bnnkit.nn.BinaryConv2d(cin, cout, 3, padding=1, bias=False)).to(dtype)
    method = get_method("rbnn", **fields)
    binarize_(model, method, filter_fn=ALL)
    return model, method, binary_layers(model)


def test_case_7_schedule_is_written_into_both_binarizers():
    _, method, layers = _conv_model()
    layer = layers[0][1]
    wb, ib = layer.weight_binarizer, layer.input_binarizer
    assert float(wb.t) == pytest.approx(0.01, rel=1e-6)  # built with the epoch-0 values
    assert float(wb.k) == pytest.approx(100.0, rel=1e-6)
    for epochs, epoch, want_t, want_k in CASE7:
        assert ede_schedule(epoch, epochs, 1e-2, 10.0) == pytest.approx((want_t, want_k), rel=1e-6)
        method.on_step_start(layers, TrainState(step=5, epoch=epoch, epochs=epochs, batch=5))
        assert float(wb.t) == pytest.approx(want_t, rel=1e-6)
        assert float(wb.k) == pytest.approx(want_k, rel=1e-6)
        assert float(ib.t) == pytest.approx(want_t, rel=1e-6)  # the raw value, clamped in forward
    assert wb.t.ndim == 0 and wb.k.ndim == 0 and ib.t.ndim == 0


# -- weights: cases 1-4 -----------------------------------------------------------------------------

CASE1 = {1: (1, 1), 4: (2, 2), 7: (1, 7), 9: (3, 3), 12: (3, 4), 18: (3, 6), 27: (3, 9),
         64: (8, 8), 128: (8, 16), 144: (12, 12), 256: (16, 16), 288: (16, 18), 576: (24, 24),
         1152: (32, 36), 2304: (48, 48), 4608: (64, 72)}  # fmt: skip


def test_case_1_get_ab():
    for n, ab in CASE1.items():
        assert tuple(get_ab(n)) == ab, n
        assert ref_get_ab(n) == ab
    for n in range(1, 400):
        a, b = get_ab(n)
        assert (a, b) == ref_get_ab(n) and a * b == n and a <= b, n


def test_weight_binarizer_state_shapes_and_init():
    torch.manual_seed(3)
    b = RBNNWeightSign((8, 16, 3, 3))  # n = 144
    assert isinstance(b, bnnkit.binarize.Binarizer)
    assert isinstance(b.theta, nn.Parameter) and b.theta.requires_grad
    assert b.theta.shape == (8, 1, 1, 1)
    assert bool((b.theta.detach() == torch.tensor(PI / 2, dtype=b.theta.dtype)).all())
    buffers = dict(b.named_buffers())
    assert {"R1", "R2", "t", "k"} <= set(buffers)
    assert b.R1.shape == (12, 12) and b.R2.shape == (12, 12) and b.t.ndim == 0
    assert not b.R1.requires_grad and "R1" not in dict(b.named_parameters())
    for r in (b.R1, b.R2):
        eye = torch.eye(r.shape[0], dtype=r.dtype)
        torch.testing.assert_close(r @ r.T, eye, rtol=0, atol=1e-5)
    lin = RBNNWeightSign((5, 18), t=0.5, k=2.0, theta_init=1.0)
    assert lin.theta.shape == (5, 1) and lin.R1.shape == (3, 3) and lin.R2.shape == (6, 6)
    assert float(lin.t) == 0.5 and float(lin.k) == 2.0
    assert bool((lin.theta.detach() == 1.0).all())
    with pytest.raises(NotImplementedError):
        b.inference_shift()


def test_rotations_are_haar_from_torch_rng():
    torch.manual_seed(11)
    a = RBNNWeightSign((4, 3, 3, 3))  # n = 27: (3, 9)
    torch.manual_seed(11)
    b = RBNNWeightSign((4, 3, 3, 3))
    assert torch.equal(a.R1, b.R1) and torch.equal(a.R2, b.R2)
    c = RBNNWeightSign((4, 3, 3, 3))
    assert not torch.equal(a.R1, c.R1)
    # Haar on O(n): det ±1 both occur (trap 21), the (0, 0) entry is symmetric about 0 (a
    # Householder QR without the sign fix has it always negative)
    dets, first = [], []
    for _ in range(60):
        r = RBNNWeightSign((2, 4)).R1.to(DT)  # n = 4: (2, 2)
        dets.append(float(torch.linalg.det(r)))
        first.append(float(r[0, 0]))
    assert all(abs(abs(d) - 1.0) < 1e-5 for d in dets)
    assert any(d < 0 for d in dets) and any(d > 0 for d in dets)
    assert 10 <= sum(f > 0 for f in first) <= 50


def test_case_2_unbiased_standardisation_and_row_major_layout():
    b = weight_sign(w4(), R1_16, R2_16, theta=0.0)
    w2 = b.sign_input(w4())
    close(w2, W2_CASE2)
    assert float((w2**2).sum()) == pytest.approx(3.0, abs=1e-12)  # Σ w2² = n − 1
    population = t([-1.09108945, -0.65465367, 0.21821789, 1.52752523])
    assert (w2.flatten() - population).abs().max() > 0.2
    close(ref_w2(w4()), W2_CASE2)
    # layout: BinaryConv2d(16, O, 3): n = 144, (12, 12); X[o, 1, 0] is W[o, 1, 1, 0] (flat 12)
    torch.manual_seed(4)
    w = torch.randn(3, 16, 3, 3, dtype=DT)
    r1, r2 = haar(12, 1), haar(12, 2)
    b = weight_sign(w, r1, r2, theta=PI / 2)
    got = b.sign_input(w)
    x = ref_w2(w).reshape(3, 12, 12)
    assert x[0, 1, 0] == ref_w2(w)[0, 1, 1, 0]
    close(got, (r1.T @ x @ r2).reshape(w.shape), atol=1e-12)
    # not the (I, kh·kw) / (kh·kw, I) views, nor the transposed reading
    wrong = (r1.T @ x.transpose(1, 2) @ r2).reshape(w.shape)
    assert (got - wrong).abs().max() > 0.1


def test_non_square_layout_and_linear_layer():
    torch.manual_seed(5)
    w = torch.randn(4, 32, 3, 3, dtype=DT)  # n = 288: (16, 18)
    r1, r2 = haar(16, 3), haar(18, 4)
    b = weight_sign(w, r1, r2, theta=[0.3, -1.0, 2.0, PI / 2])
    theta = b.theta.detach().clone()
    close(b.sign_input(w), ref_w3(w, r1, r2, theta), atol=1e-12)
    wl = torch.randn(5, 12, dtype=DT)  # a BinaryLinear weight: n = 12, (3, 4)
    lb = weight_sign(wl, haar(3, 5), haar(4, 6), theta=0.7)
    assert lb.theta.shape == (5, 1)
    close(lb.sign_input(wl), ref_w3(wl, haar(3, 5), haar(4, 6), t(0.7)), atol=1e-12)
    assert torch.equal(lb(wl).detach(), ref_sign(lb.sign_input(wl)))


def test_case_3_bilinear_rotation():
    x = t([[1.0, 2.0], [3.0, 4.0]])
    close(R1_16.T @ x, [[2.36602540, 3.73205081], [2.09807621, 2.46410162]])
    want = [[4.31199104, 0.96592583], [3.22594688, 0.25881905]]
    close(R1_16.T @ x @ R2_16, want)
    assert float(torch.linalg.norm(R1_16.T @ x @ R2_16)) == pytest.approx(math.sqrt(30), abs=TOL)
    kron = torch.kron(R1_16, R2_16).T @ x.flatten()
    close(kron, (R1_16.T @ x @ R2_16).flatten(), atol=1e-15)
    # the module's rotation: at θ = π/2 sign_input(W) = R1ᵀ·w2·R2 with w2 = (X − 2.5)/σ, so
    # σ·sign_input + 2.5·R1ᵀ𝟙R2 is R1ᵀ·X·R2 (the other convention R1·X·R2ᵀ is not)
    w = x.reshape(1, 4, 1, 1)
    b = weight_sign(w, R1_16, R2_16, theta=PI / 2)
    sigma = math.sqrt(5.0 / 3.0)
    got = sigma * b.sign_input(w).reshape(2, 2) + 2.5 * (
        R1_16.T @ torch.ones(2, 2, dtype=DT) @ R2_16
    )
    close(got, want)
    other = R1_16 @ x @ R2_16.T
    assert (got - other).abs().max() > 0.5


CASE4 = {
    PI / 2: (RW_CASE4, [-1.0, 1.0, 1.0, 1.0]),
    PI / 3: ([-0.46546777, 0.47167201, 1.29001259, 0.66284201], [-1.0, 1.0, 1.0, 1.0]),
    PI / 6: ([-0.66810440, 0.03270009, 0.82466241, 0.94180505], [-1.0, 1.0, 1.0, 1.0]),
    -PI / 6: ([-0.66810440, 0.03270009, 0.82466241, 0.94180505], [-1.0, 1.0, 1.0, 1.0]),
    0.0: (W2_CASE2, [-1.0, -1.0, 1.0, 1.0]),
}


@pytest.mark.parametrize("theta", list(CASE4), ids=["pi/2", "pi/3", "pi/6", "-pi/6", "0"])
def test_case_4_blend(theta):
    want_w3, want_sign = CASE4[theta]
    b = weight_sign(w4(), R1_16, R2_16, theta=theta)
    w3 = b.sign_input(w4())
    close(w3, want_w3)
    assert not w3.requires_grad
    close(ref_w3(w4(), R1_16, R2_16, t(theta)), want_w3)
    assert torch.equal(b(w4()).detach().flatten(), t(want_sign))
    if theta == -PI / 6:  # sin θ instead of |sin θ| would extrapolate away from Rw
        wrong = ref_w3(w4(), R1_16, R2_16, t(theta), abs_sin=False)
        assert (w3.flatten() - wrong.flatten()).abs().max() > 0.3
    # the layer: α = mean|W| = 3.5 multiplies the sign of w3
    _, layer, _ = one_layer(w4())
    set_rot(layer.weight_binarizer, R1_16, R2_16)
    set_theta(layer.weight_binarizer, theta)
    close(layer.scale.alpha, [3.5])
    close(layer.binarized_weight(), [3.5 * s for s in want_sign])
    close(layer.sign_input(), want_w3)


# -- gradients through the blend: cases 9, 10 -------------------------------------------------------

C9 = [1.0, -1.0, 2.0, 0.5]
CASE9 = {
    PI / 3: (-0.28783137, [0.04296302, -0.05396726, 0.00401938, 0.00698485]),
    PI / 6: (0.06517604, [0.14067445, -0.27601643, 0.17867847, -0.04333650]),
}


def _case9(theta: float):
    b = weight_sign(w4(), R1_16, R2_16, theta=theta)
    w = w4().requires_grad_(True)
    (b(w) * t(C9).view(1, 4, 1, 1)).sum().backward()
    return b, w


@pytest.mark.parametrize("theta", list(CASE9), ids=["pi/3", "pi/6"])
def test_case_9_theta_and_latent_gradients(theta):
    want_theta, want_w = CASE9[theta]
    b, w = _case9(theta)
    close(b.theta.grad, [want_theta])
    close(w.grad, want_w)
    assert b.R1.grad is None and b.R2.grad is None
    # the reference, and the spec's intermediate values at θ = π/3
    wr, th = w4().requires_grad_(True), t(theta).requires_grad_(True)
    (ref_weight_sign(wr, R1_16, R2_16, th, 1.0, 1.0) * t(C9).view(1, 4, 1, 1)).sum().backward()
    close(wr.grad, want_w)
    close(th.grad, want_theta)
    if theta == PI / 3:
        w3 = ref_w3(w4(), R1_16, R2_16, t(theta))
        close(t(C9) * ref_grad(w3.flatten(), 1.0, 1.0),
              [0.94874579, -0.94254155, 0.24840194, 0.37568577])  # fmt: skip
        close(ref_rotate(ref_w2(w4()), R1_16, R2_16) - ref_w2(w4()),
              [0.55361356, 1.19929360, 1.27136034, -0.76214121])  # fmt: skip


def test_case_9_no_gradient_through_the_rotated_path():
    # trap 3: letting the gradient flow through R1ᵀXR2 is a different method
    _, w = _case9(PI / 3)
    wr = w4().requires_grad_(True)
    wrong = ref_weight_sign(wr, R1_16, R2_16, t(PI / 3), 1.0, 1.0, detach_rot=False)
    (wrong * t(C9).view(1, 4, 1, 1)).sum().backward()
    assert (w.grad.flatten() - wr.grad.flatten()).abs().max() > 0.05
    # detached statistics are wrong too: the standardisation is differentiable
    wd = w4().requires_grad_(True)
    wrong = ref_weight_sign(wd, R1_16, R2_16, t(PI / 3), 1.0, 1.0, detach_stats=True)
    (wrong * t(C9).view(1, 4, 1, 1)).sum().backward()
    assert (w.grad.flatten() - wd.grad.flatten()).abs().max() > 0.01


def test_case_9_theta_pi_over_2_gives_exactly_zero_latent_gradient_float64():
    b, w = _case9(PI / 2)
    assert w.grad is not None and torch.equal(w.grad, torch.zeros_like(w.grad))
    assert abs(float(b.theta.grad)) < 1e-15  # −4.27e-17: cos(π/2) = 6.1e-17 in float64


@pytest.mark.parametrize("theta_init", [None, 1.0])
def test_case_10_float32_latent_gradient_is_exactly_zero_at_default_theta(theta_init):
    fields = {} if theta_init is None else {"theta_init": theta_init}
    model, method, layers = _conv_model(cin=3, cout=4, dtype=torch.float32, **fields)
    layer = layers[0][1]
    theta = layer.weight_binarizer.theta
    assert theta.dtype == torch.float32
    if theta_init is None:
        assert float(theta.detach().flatten()[0]) == pytest.approx(1.5707963705, abs=1e-10)
        assert bool((torch.sin(theta.detach()) == 1.0).all())
    method.on_step_start(layers, TrainState(step=0, epoch=0, epochs=10, batch=0))
    x = torch.randn(2, 3, 6, 6)
    out = model(x)
    (out * torch.randn_like(out)).sum().backward()
    grad = layer.weight.grad
    assert grad is not None and torch.isfinite(theta.grad).all()
    if theta_init is None:
        assert torch.equal(grad, torch.zeros_like(grad))
    else:
        assert float(grad.abs().max()) > 0.0
        assert float(theta.grad.abs().max()) > 0.0


# -- the rotation update: cases 11-17 ---------------------------------------------------------------

X11 = (Q(PI / 12) @ H).unsqueeze(0)


def test_case_11_recovery_of_a_rotated_sign_matrix():
    close(X11[0], [[0.70710678, 1.22474487], [1.22474487, -0.70710678]])
    r1_in, r2_in = I2.clone(), I2.clone()
    r1, r2 = rotation_update(X11, r1_in, r2_in, 3)
    assert torch.equal(r1_in, I2) and torch.equal(r2_in, I2)  # pure: inputs kept
    assert r1.dtype == DT and r2.dtype == DT
    close(r1, [[0.96592583, -0.25881905], [0.25881905, 0.96592583]])
    close(r1, Q(PI / 12), atol=1e-12)
    close(r2, I2, atol=1e-12)
    assert J(X11, I2, I2) == pytest.approx(8 * (1 - math.cos(PI / 12)), abs=1e-8)
    assert J(X11, I2, I2) == pytest.approx(0.27259339, abs=1e-8)
    assert J(X11, r1, r2) <= 1e-28
    r1b, r2b = rotation_update(X11, I2, I2, 1)  # iterations 2 and 3 change nothing
    close(r1b, r1, atol=1e-12)
    close(r2b, r2, atol=1e-12)


def test_case_12_two_channels_sum_over_o():
    x = torch.stack([Q(PI / 12) @ H, Q(PI / 12) @ H2])
    r1, r2 = rotation_update(x, I2, I2, 1)
    close(r1, Q(PI / 12), atol=1e-12)
    close(r2, I2, atol=1e-12)


def test_case_13_left_right_ambiguity():
    x = (H @ Q(PI / 12)).unsqueeze(0)
    close(x[0], [[1.22474487, 0.70710678], [0.70710678, -1.22474487]])
    r1, r2 = rotation_update(x, I2, I2, 1)
    close(r1, [[0.96592583, 0.25881905], [-0.25881905, 0.96592583]])
    close(r1, Q(-PI / 12), atol=1e-12)
    close(r2, I2, atol=1e-12)
    close(r1.T @ x[0] @ r2, H, atol=1e-12)


def test_case_14_generic_2x2_step():
    x = t([[[0.9, -0.2], [0.4, 0.7]]])
    assert J(x, I2, I2) == pytest.approx(1.1, abs=1e-12)
    r1, r2 = rotation_update(x, I2, I2, 1)
    close(r1, [[0.91036648, 0.41380294], [-0.41380294, 0.91036648]])
    close(r1, Q(-0.42662749))
    close(r2, I2, atol=1e-12)
    assert J(x, r1, I2, ref_sign(x)) == pytest.approx(0.66678161, abs=TOL)
    close(r1.T @ x[0] @ r2, [[0.65380865, -0.47173536], [0.73656924, 0.55449595]])
    r1c, r2c = rotation_update(x, I2, I2, 3)  # a fixed point
    close(r1c, r1, atol=1e-12)
    close(r2c, r2, atol=1e-12)


X15 = t([[[0.9, -0.2, 0.3], [0.4, 0.7, -0.6]], [[-0.5, 0.1, 0.8], [0.3, -0.9, 0.2]]])
R2_15 = [[0.98831850, 0.08988195, -0.12307632], [-0.10865145, 0.98185125, -0.15544448],
         [0.10687098, 0.16700107, 0.98014756]]  # fmt: skip


def test_case_15_non_square_two_channels():
    i3 = torch.eye(3, dtype=DT)
    r1, r2 = rotation_update(X15, I2, i3, 1)
    assert r1.shape == (2, 2) and r2.shape == (3, 3)
    close(r1, [[0.92075172, 0.39014903], [-0.39014903, 0.92075172]])
    close(r1, Q(-0.40079345))
    close(r2, R2_15)
    assert float(torch.linalg.det(r2)) == pytest.approx(1.0, abs=1e-9)
    b = ref_sign(X15)
    assert J(X15, I2, i3, b) == pytest.approx(3.99, abs=1e-9)
    assert J(X15, r1, i3, b) == pytest.approx(2.97438453, abs=TOL)
    assert J(X15, r1, r2, b) == pytest.approx(2.77408874, abs=TOL)
    # the reference agrees
    rr1, rr2 = ref_rotation_update(X15, I2, i3, 1)
    close(rr1, r1, atol=1e-12)
    close(rr2, R2_15)


def test_case_16_layer_refresh_in_place():
    b = weight_sign(w4(), R1_16, R2_16, theta=PI / 2)
    assert torch.equal(ref_sign(b.sign_input(w4())).flatten(), t([-1.0, 1.0, 1.0, 1.0]))
    x = ref_w2(w4()).reshape(1, 2, 2)
    assert J(x, R1_16, R2_16) == pytest.approx(0.91055692, abs=TOL)
    r1_obj, r1_ptr, r2_ptr = b.R1, b.R1.data_ptr(), b.R2.data_ptr()
    w, theta = w4(), b.theta.detach().clone()
    b.refresh(w, 3)
    assert b.R1 is r1_obj and b.R1.data_ptr() == r1_ptr and b.R2.data_ptr() == r2_ptr  # trap 10
    close(b.R1, [[0.98639392, -0.16439899], [0.16439899, 0.98639392]])
    close(b.R1, Q(0.16514868))
    close(b.R2, Q(PI / 4))
    assert J(x, b.R1, b.R2) == pytest.approx(0.49725333, abs=TOL)
    close(b.sign_input(w), [-0.87874955, 0.39543730, 1.23024937, 0.74693712])
    assert torch.equal(ref_sign(b.sign_input(w)).flatten(), t([-1.0, 1.0, 1.0, 1.0]))
    assert torch.equal(w, w4()) and torch.equal(b.theta.detach(), theta)
    assert not b.R1.requires_grad


def test_case_17_invariants_and_reference():
    x = torch.randn(8, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(0))
    r1_0, r2_0 = haar(4, 1), haar(4, 2)
    trace: list[float] = []
    ref_rotation_update(x, r1_0, r2_0, 3, trace=trace)
    assert len(trace) == 9
    assert all(b <= a + 1e-12 * trace[0] for a, b in itertools.pairwise(trace))
    previous = J(x, r1_0, r2_0)
    for iters in (1, 2, 3):
        r1, r2 = rotation_update(x, r1_0, r2_0, iters)
        rr1, rr2 = ref_rotation_update(x, r1_0, r2_0, iters)
        close(r1, rr1, atol=1e-10)  # the batched form equals the per-channel loops
        close(r2, rr2, atol=1e-10)
        eye = torch.eye(4, dtype=DT)
        close(r1.T @ r1, eye, atol=1e-12)
        close(r2.T @ r2, eye, atol=1e-12)
        assert abs(abs(float(torch.linalg.det(r1))) - 1) < 1e-12
        norms = torch.linalg.norm(r1.T @ x @ r2, dim=(1, 2))
        close(norms, torch.linalg.norm(x, dim=(1, 2)), atol=1e-12)
        now = J(x, r1, r2)  # J after the next B-step: non-increasing over iterations
        assert now <= previous + 1e-12
        previous = now
    # starting from R1 = Q(π/2): the first B-step keeps the current signs
    r1, r2 = rotation_update(X11, Q(PI / 2), I2, 3)
    close(r1, Q(PI / 2 + PI / 12), atol=1e-12)
    close(r2, I2, atol=1e-12)
    close(ref_sign(r1.T @ X11[0] @ r2), [[1.0, -1.0], [-1.0, -1.0]])
    close(ref_sign(Q(PI / 2).T @ X11[0]), [[1.0, -1.0], [-1.0, -1.0]])


ROT_VARIANTS = ["vh_as_v", "r2_first", "r2_old_r1", "b_after_r1"]


@pytest.mark.parametrize("variant", ROT_VARIANTS)
def test_rotation_update_rejects_wrong_readings(variant):
    # traps 6, 7: torch.svd V vs linalg.svd Vh; R1-step first with the old R2, R2-step with the
    # new R1, B once per iteration
    x = torch.randn(6, 3, 5, dtype=DT, generator=torch.Generator().manual_seed(7))  # O·a ≥ b
    r1_0, r2_0 = haar(3, 8), haar(5, 9)
    r1, r2 = rotation_update(x, r1_0, r2_0, 3)
    rr1, rr2 = ref_rotation_update(x, r1_0, r2_0, 3)
    close(r1, rr1, atol=1e-10)
    close(r2, rr2, atol=1e-10)
    w1, w2 = ref_rotation_update(x, r1_0, r2_0, 3, variant=variant)
    assert max(float((r1 - w1).abs().max()), float((r2 - w2).abs().max())) > 1e-6, variant


# -- activations: cases 8, 21 -----------------------------------------------------------------------

A8 = [0.5, -1.0, 2.0, 0.0]
CASE8_G1 = [0.49066667, -0.43733333, -0.34133333, 0.288]


def _act_grad(x, t_, g=None, center=True, train=True):
    act = RBNNActSign(center=center).to(DT)
    set_tk(act, t_)
    act.train(train)
    xs = t(x).view(-1, 4, 1, 1).requires_grad_(True)
    out = act(xs)
    (out * (torch.ones_like(out) if g is None else t(g).view_as(out))).sum().backward()
    return act, xs, out


def test_case_8_per_sample_standardisation_forward():
    act, xs, out = _act_grad(A8, 1.0)
    assert torch.equal(out.detach().flatten(), t([1.0, -1.0, 1.0, -1.0]))  # sign(a) has +1 last
    close(act.sign_input(xs.detach()), [0.125, -1.375, 1.625, -0.375])
    # a2 = [0.1, −1.1, 1.3, −0.3]: the reference's surrogate there
    a2 = (t(A8) - 0.375) / 1.25
    close(a2, [0.1, -1.1, 1.3, -0.3])
    close(ref_grad(a2, 1.0, 1.0), [1.31421356, 0.31421356, 0.11421356, 1.11421356])
    act.eval()
    assert torch.equal(act(xs.detach()).flatten(), t([1.0, -1.0, 1.0, -1.0]))  # eval too


@pytest.mark.parametrize("t_", [0.01, 0.5, 1.0])
def test_case_8_gradient_with_t_clamped_to_one(t_):
    _, xs, _ = _act_grad(A8, t_)
    close(xs.grad, CASE8_G1)
    xr = t(A8).view(1, 4, 1, 1).requires_grad_(True)
    ref_act(xr, t_).sum().backward()
    close(xr.grad, CASE8_G1)


def test_case_8_gradient_at_t_2_with_upstream():
    g = [1.0, -2.0, 0.5, 3.0]
    want = [0.51260645, -1.82141260, -1.03885791, 2.34766406]
    _, xs, _ = _act_grad(A8, 2.0, g)
    close(xs.grad, want)
    _, xe, _ = _act_grad(A8, 2.0, g, train=False)  # the same function in eval
    close(xe.grad, want)


def test_case_8_statistics_are_per_sample():
    act, xs, out = _act_grad([*A8, 1.0, 1.0, 1.0, 3.0], 1.0)
    close(out, [[1.0, -1.0, 1.0, -1.0], [-1.0, -1.0, -1.0, 1.0]])
    close(act.sign_input(xs.detach()), [[0.125, -1.375, 1.625, -0.375], [-0.5, -0.5, -0.5, 1.5]])
    close(xs.grad[0], CASE8_G1)  # sample 0 is unaffected by sample 1
    # sample 1 has std 1: a2 = x − 1.5; its gradient is the reference's
    xr = t([1.0, 1.0, 1.0, 3.0]).view(1, 4, 1, 1).requires_grad_(True)
    ref_act(xr, 1.0).sum().backward()
    close(xs.grad[1], xr.grad)


def test_case_21_centring_changes_input_signs():
    x = t([0.3, 0.2, 0.9, -0.1, 0.4, 0.6]).view(1, 6, 1, 1)
    act = RBNNActSign(center=True).to(DT).eval()
    close(act.sign_input(x), t([0.3, 0.2, 0.9, -0.1, 0.4, 0.6]) - 0.38333333)
    with torch.no_grad():
        out = act(x)
    assert torch.equal(out.flatten(), t([-1.0, -1.0, 1.0, -1.0, 1.0, 1.0]))
    assert not torch.equal(out.flatten(), ref_sign(x).flatten())
    with pytest.raises(NotImplementedError, match="mean"):
        act.inference_shift()


def test_center_false_divides_by_the_std_only():
    x = t([0.3, 0.2, 0.9, -0.1, 0.4, 0.6]).view(1, 6, 1, 1)
    act = RBNNActSign(center=False).to(DT)
    assert act.inference_shift() is None
    assert torch.equal(act.sign_input(x), x)
    xs = x.clone().requires_grad_(True)
    out = act(xs)
    assert torch.equal(out.detach().flatten(), ref_sign(x).flatten())  # sign(a), 5 of 6 positive
    g = t([1.0, -0.5, 2.0, 0.3, -1.0, 0.7]).view_as(x)
    (out * g).sum().backward()
    xr = x.clone().requires_grad_(True)
    (ref_act(xr, 1.0, center=False) * g).sum().backward()
    close(xs.grad, xr.grad, atol=1e-10)


def test_registered_activation_binarizer():
    act = bnnkit.binarize.get_binarizer("rbnn_activation")
    assert isinstance(act, RBNNActSign) and isinstance(act, bnnkit.binarize.Binarizer)
    assert "rbnn_activation" in bnnkit.binarize.list_binarizers()
    assert float(act.t) == 1.0 and act.t.ndim == 0 and "t" in dict(act.named_buffers())
    x = t(A8).view(1, 4, 1, 1)
    close(act.sign_input(x.float()), [0.125, -1.375, 1.625, -0.375])  # centred by default


ACT_VARIANTS = {  # trap 1, 11, §4: each changes a checked value
    "biased std": ({"unbiased": False}, ("x",)),
    "eps 1e-5": ({"eps": 1e-5}, ("x",)),
    "detached statistics": ({"detach": True}, ("x",)),
    "t not clamped to 1": ({"clamp": False}, ("x",)),
    "k = 1/t for activations": ({"k": 2.0}, ("x",)),
    "per-channel statistics": ({"stats": "channel"}, ("out", "x")),
    "batch statistics": ({"stats": "batch"}, ("out", "x")),
    "no centring": ({"center": False}, ("out", "x")),
}


@pytest.mark.parametrize("variant", list(ACT_VARIANTS))
def test_activation_matches_reference_and_rejects_wrong_variants(variant):
    fields, keys = ACT_VARIANTS[variant]
    gen = torch.Generator().manual_seed(8)
    x = 0.03 * torch.randn(3, 3, 4, 4, dtype=DT, generator=gen) + t([0.02, -0.01, 0.05]).view(
        3, 1, 1, 1
    )
    x = x + 0.02 * torch.randn(1, 3, 1, 1, dtype=DT, generator=gen)  # channel offsets
    g = torch.randn(3, 3, 4, 4, dtype=DT, generator=gen)
    act = RBNNActSign().to(DT)
    set_tk(act, 0.5)
    xs = x.clone().requires_grad_(True)
    out = act(xs)
    (out * g).sum().backward()
    got = {"out": out.detach(), "x": xs.grad}
    runs = {}
    for name, kw in (("right", {}), ("wrong", fields)):
        xr = x.clone().requires_grad_(True)
        o = ref_act(xr, 0.5, **kw)
        (o * g).sum().backward()
        runs[name] = {"out": o.detach(), "x": xr.grad}
    for key in ("out", "x"):
        torch.testing.assert_close(got[key], runs["right"][key], rtol=1e-9, atol=1e-10)
    for key in keys:
        assert not torch.allclose(got[key], runs["wrong"][key], rtol=1e-4, atol=1e-6), key


# -- the whole layer: cases 19, 20 and the float64 reference ------------------------------------------


def test_case_19_full_layer():
    model, layer, _ = one_layer(w4())
    wb, ib = layer.weight_binarizer, layer.input_binarizer
    assert isinstance(wb, RBNNWeightSign) and isinstance(ib, RBNNActSign)
    set_rot(wb, R1_16, R2_16)
    set_theta(wb, PI / 3)
    set_tk(wb, 1.0, 1.0)
    set_tk(ib, 1.0)
    close(layer.scale.alpha, [3.5])
    x = t(A8).view(1, 4, 1, 1).requires_grad_(True)
    y = model(x)
    close(y, [-7.0])
    assert torch.equal(ib(x.detach()).flatten(), t([1.0, -1.0, 1.0, -1.0]))
    y.sum().backward()
    close(layer.weight.grad, [0.12127170, -0.18416848, 0.06440407, -0.00150729])
    close(wb.theta.grad, [0.21946732])
    close(layer.scale.alpha.grad, [-2.0])
    close(x.grad, [-3.77783164, 0.03938047, 0.96414815, 2.77430303])


W20 = [[1.0, 2.0, 4.0, 7.0], [-3.0, 0.5, 1.0, 2.0]]
W3_CASE20 = [[-0.39129762, 0.63234689, 1.46034258, 0.56073445],
             [-0.88214802, 0.66029878, 0.81191735, 0.28738581]]  # fmt: skip


def _case20(dtype=DT, **fields):
    model, layer, method = one_layer(t(W20).view(2, 4, 1, 1), name="conv", dtype=dtype, **fields)
    set_rot(layer.weight_binarizer, R1_16, R2_16)
    set_theta(layer.weight_binarizer, [PI / 2, PI / 6])
    return model, layer, method


def test_case_20_weights_of_the_export():
    _, layer, _ = _case20()
    b, w = layer.weight_binarizer, layer.weight
    close(layer.sign_input(), W3_CASE20)
    close(b.sign_input(w), W3_CASE20)
    close(layer.scale.alpha, [3.5, 1.625])
    assert layer.scale.alpha.shape == (2,)
    close(layer.binarized_weight(), [[-3.5, 3.5, 3.5, 3.5], [-1.625, 1.625, 1.625, 1.625]])
    set_theta(b, [PI / 2, 0.0])
    close(b.sign_input(w)[1], [-1.43700312, 0.17244037, 0.40236087, 0.86220187])
    set_theta(b, [PI / 2, PI / 2])
    close(b.sign_input(w)[1], [-0.32729292, 1.14815718, 1.22147382, -0.28743025])


def test_case_20_convert_packs_the_signs_of_w3_with_center_inputs_false():
    model, layer, _ = _case20(dtype=torch.float32, center_inputs=False)
    assert layer.input_binarizer.inference_shift() is None
    packed = bnnkit.export.convert(model, check=True)
    (_, pl), *_ = bnnkit.export.packed_layers(packed)
    close(pl.scale, [3.5, 1.625])
    signs = bnnkit.export.unpack_signs(pl.weight_bits, 4).permute(0, 3, 1, 2)
    assert torch.equal((signs < 0).flatten(1), torch.tensor([[True, False, False, False]] * 2))
    assert not torch.equal((signs < 0).flatten(1), (layer.weight < 0).flatten(1))  # not sign(W)
    x = torch.randn(3, 4, 5, 5)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(packed(x), model(x), rtol=1e-4, atol=1e-4)


def test_case_20_convert_refuses_the_per_sample_centring():
    model, _, _ = _case20(dtype=torch.float32)
    with pytest.raises(bnnkit.export.ExportError) as info:
        bnnkit.export.convert(model)
    msg = str(info.value)
    assert "'conv'" in msg and "mean" in msg.lower(), msg


def _layer_run(wt, wk, at, training=True):
    gen = torch.Generator().manual_seed(5)
    w = 0.02 * torch.randn(4, 8, 3, 3, dtype=DT, generator=gen)  # n = 72: (8, 9)
    w = w + 0.01 * torch.randn(4, 1, 1, 1, dtype=DT, generator=gen)
    x = 0.03 * torch.randn(2, 8, 5, 5, dtype=DT, generator=gen) + t([0.02, -0.03]).view(2, 1, 1, 1)
    r = torch.randn(2, 4, 5, 5, dtype=DT, generator=gen)
    model, layer, _ = one_layer(w, padding=1)
    wb, ib = layer.weight_binarizer, layer.input_binarizer
    set_rot(wb, haar(8, 21), haar(9, 22))
    set_theta(wb, [1.2, -0.7, 2.5, 0.4])
    set_tk(wb, wt, wk)
    set_tk(ib, at)
    with torch.no_grad():
        layer.scale.alpha.copy_(t([0.5, 1.5, 2.0, 0.8]))
    model.train(training)
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    (out * r).sum().backward()
    got = {"out": out.detach(), "w": layer.weight.grad, "x": xg.grad,
           "theta": wb.theta.grad, "alpha": layer.scale.alpha.grad}  # fmt: skip
    return w, x, r, got


def _ref_run(w, x, r, wt, wk, at, weight_kw=None, act_kw=None):
    wr, xr = w.clone().requires_grad_(True), x.clone().requires_grad_(True)
    th = t([1.2, -0.7, 2.5, 0.4]).view(4, 1, 1, 1).requires_grad_(True)
    alpha = t([0.5, 1.5, 2.0, 0.8]).requires_grad_(True)
    bw = ref_weight_sign(wr, haar(8, 21), haar(9, 22), th, wt, wk, **(weight_kw or {}))
    ba = ref_act(xr, at, **(act_kw or {}))
    out = F.conv2d(ba, alpha.view(4, 1, 1, 1) * bw, padding=1)  # zero padding of the ±1 map
    (out * r).sum().backward()
    return {"out": out.detach(), "w": wr.grad, "x": xr.grad, "theta": th.grad,
            "alpha": alpha.grad}  # fmt: skip


@pytest.mark.parametrize(
    ("wt", "wk", "at"), [(0.5, 2.0, 0.5), (2.5, 1.0, 2.5), (0.01, 100.0, 0.01)]
)
def test_conv_layer_matches_float64_reference(wt, wk, at):
    w, x, r, got = _layer_run(wt, wk, at)
    want = _ref_run(w, x, r, wt, wk, at)
    for key in ("out", "w", "x", "theta", "alpha"):
        torch.testing.assert_close(got[key].reshape(want[key].shape), want[key],
                                   rtol=1e-9, atol=1e-10, msg=key)  # fmt: skip
    # §4: the activation standardisation has no train/eval switch
    _, _, _, got_eval = _layer_run(wt, wk, at, training=False)
    for key in ("out", "w", "x", "theta", "alpha"):
        torch.testing.assert_close(got_eval[key], got[key], rtol=0, atol=1e-12)


WRONG_VARIANTS = {  # §12: each must change a value the reference test checks
    "biased weight std (trap 1)": ({"unbiased": False}, None, ("w", "theta")),
    "weight eps 1e-5 (trap 1)": ({"eps": 1e-5}, None, ("w", "theta")),
    "detached weight statistics (§2.1)": ({"detach_stats": True}, None, ("w",)),
    "Rw not detached (trap 3)": ({"detach_rot": False}, None, ("w",)),
    "sin θ, not |sin θ| (§2.3)": ({"abs_sin": False}, None, ("w", "theta")),
    "R1·X·R2ᵀ (§2.3)": ({"convention": "R1_X_R2T"}, None, ("w", "theta")),
    "activation t not clamped (trap 11)": (None, {"clamp": False}, ("x",)),
    "activation k = 1/t (trap 11)": (None, {"k": 2.0}, ("x",)),
    "activation eps 1e-5 (trap 1)": (None, {"eps": 1e-5}, ("x",)),
    "activation not centred (trap 2)": (None, {"center": False}, ("out", "x")),
}


@pytest.mark.parametrize("variant", list(WRONG_VARIANTS))
def test_wrong_variants_of_the_spec_are_rejected(variant):
    weight_kw, act_kw, keys = WRONG_VARIANTS[variant]
    args = (0.5, 2.0, 0.5)
    w, x, r, got = _layer_run(*args)
    right = _ref_run(w, x, r, *args)
    wrong = _ref_run(w, x, r, *args, weight_kw=weight_kw, act_kw=act_kw)
    for key in keys:
        g = got[key].reshape(right[key].shape)
        torch.testing.assert_close(g, right[key], rtol=1e-9, atol=1e-10)
        assert not torch.allclose(g, wrong[key], rtol=1e-4, atol=1e-6), (variant, key)


# -- the method: registration, fields, modules, hooks -------------------------------------------------


def test_registered_frozen_dataclass_with_defaults():
    assert "rbnn" in bnnkit.list_methods()
    m = get_method("rbnn")
    assert isinstance(m, RBNN) and m.name == "rbnn"
    fields = {f.name: f.default for f in dataclasses.fields(m)}
    assert fields == {"t_min": 1e-2, "t_max": 10.0, "rotation_iters": 3, "rotation_every": 1,
                      "theta_init": PI / 2, "center_inputs": True}  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.t_min = 0.1  # type: ignore[misc]
    assert m.monotone_weight_sign is False and m.symmetric_weight_set is True
    assert m.binarizes_weights is True and type(m).adds_rules is False
    m2 = get_method({"name": "rbnn", "rotation_iters": 1, "rotation_every": 5, "t_min": 0.1})
    assert (m2.rotation_iters, m2.rotation_every, m2.t_min) == (1, 5, 0.1)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"t_min": 0.0}, "t_min"),
        ({"t_min": -1e-2}, "t_min"),
        ({"t_min": 20.0}, "t_"),  # t_min > t_max: either field may be named
        ({"t_min": 1.0, "t_max": 0.5}, "t_"),
        ({"rotation_iters": 0}, "rotation_iters"),
        ({"rotation_every": 0}, "rotation_every"),
        ({"center_inputs": "yes"}, "center_inputs"),
    ],
)
def test_case_24_field_validation(fields, named):
    for build in (lambda: get_method("rbnn", **fields),
                  lambda: get_method({"name": "rbnn", **fields})):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            build()
        assert named in str(info.value), str(info.value)


def test_layer_builds_the_specified_modules():
    torch.manual_seed(1)
    w = torch.randn(6, 4, 3, 3, dtype=DT)
    model, layer, _ = one_layer(w, padding=1)
    wb, ib, sc = layer.weight_binarizer, layer.input_binarizer, layer.scale
    assert isinstance(wb, RBNNWeightSign) and isinstance(ib, RBNNActSign)
    assert isinstance(sc, bnnkit.binarize.LearnableScale)
    assert sc.alpha.shape == (6,) and sc.alpha.requires_grad
    close(sc.alpha, w.abs().mean(dim=(1, 2, 3)), atol=1e-12)  # mean|W| at binarize_ time
    assert wb.theta.shape == (6, 1, 1, 1) and wb.R1.shape == (6, 6) and wb.R2.shape == (6, 6)
    keys = set(model.state_dict())
    assert {"0.weight_binarizer.theta", "0.weight_binarizer.R1", "0.weight_binarizer.R2",
            "0.scale.alpha"} <= keys  # fmt: skip
    assert any(p is wb.theta for p in model.parameters())
    assert layer.weight_bits == 1 and layer.input_bits == 1
    with pytest.raises(NotImplementedError):
        ib.inference_shift()
    # the binarized weight is α·sign(w3), and the sign history tracks sign(w3)
    w3 = layer.sign_input()
    assert not w3.requires_grad
    close(layer.binarized_weight(), sc.alpha.detach().view(6, 1, 1, 1) * ref_sign(w3))
    assert torch.equal(layer.sign_history.negative, w3 < 0)


def test_theta_init_field_and_center_inputs_field():
    _, layer, _ = one_layer(torch.randn(3, 4, 3, 3, dtype=DT), padding=1, theta_init=0.25,
                            center_inputs=False)  # fmt: skip
    assert bool((layer.weight_binarizer.theta.detach() == 0.25).all())
    x = t([0.3, 0.2, 0.9, -0.1]).view(1, 4, 1, 1)
    assert torch.equal(layer.input_binarizer.sign_input(x), x)
    assert layer.input_binarizer.inference_shift() is None


def test_sign_history_follows_sign_of_w3():
    # trap 20: with no latent change, moving θ (or R) flips binary weights
    model, layer, _ = one_layer(w4())
    set_rot(layer.weight_binarizer, R1_16, R2_16)
    set_theta(layer.weight_binarizer, PI / 2)
    bnnkit.nn.reset_sign_history(model)
    h = layer.sign_history
    assert torch.equal(h.negative.flatten(), torch.tensor([True, False, False, False]))
    set_theta(layer.weight_binarizer, 0.0)  # w3 = w2: sign [−, −, +, +]
    bnnkit.nn.update_sign_history(model)
    assert torch.equal(h.negative.flatten(), torch.tensor([True, True, False, False]))
    assert torch.equal(h.flipped.flatten(), torch.tensor([False, True, False, False]))


def _rotations(layer):
    return layer.weight_binarizer.R1.clone(), layer.weight_binarizer.R2.clone()


def _expected_refresh(layer, r1, r2, iters=3):
    x = ref_w2(layer.weight.detach()).reshape(layer.weight.shape[0], r1.shape[0], r2.shape[0])
    return ref_rotation_update(x, r1, r2, iters)


def _changed(before, layer) -> bool:
    return not (torch.equal(before[0], layer.weight_binarizer.R1)
                and torch.equal(before[1], layer.weight_binarizer.R2))  # fmt: skip


def test_case_18_refresh_timing():
    model, method, layers = _conv_model()
    layer = layers[0][1]
    x = torch.randn(2, 4, 5, 5, dtype=DT)
    r0 = _rotations(layer)
    # epoch 0, first step: refreshed, before the forward, with the current weights
    method.on_step_start(layers, TrainState(step=0, epoch=0, epochs=10, batch=0))
    want = _expected_refresh(layer, *r0)
    close(layer.weight_binarizer.R1, want[0], atol=1e-10)
    close(layer.weight_binarizer.R2, want[1], atol=1e-10)
    assert _changed(r0, layer)
    r1 = _rotations(layer)
    for batch in (1, 2, 3):  # later steps of the epoch: no change
        method.on_step_start(layers, TrainState(step=batch, epoch=0, epochs=10, batch=batch))
        assert not _changed(r1, layer)
    for training in (True, False):  # forwards (train or eval) never refresh
        model.train(training)
        with torch.no_grad():
            model(x)
        assert not _changed(r1, layer)
    with torch.no_grad():
        layer.weight.add_(0.1 * torch.randn_like(layer.weight))
    method.on_step_start(layers, TrainState(step=4, epoch=1, epochs=10, batch=0))
    want = _expected_refresh(layer, *r1)  # from the current latent weights and R's
    close(layer.weight_binarizer.R1, want[0], atol=1e-10)
    close(layer.weight_binarizer.R2, want[1], atol=1e-10)
    # a run resumed mid-epoch 3: no refresh until epoch 4
    r2 = _rotations(layer)
    method.on_step_start(layers, TrainState(step=30, epoch=3, epochs=10, batch=2))
    assert not _changed(r2, layer)
    method.on_step_start(layers, TrainState(step=31, epoch=3, epochs=10, batch=3))
    assert not _changed(r2, layer)
    method.on_step_start(layers, TrainState(step=40, epoch=4, epochs=10, batch=0))
    assert _changed(r2, layer)


def test_case_18_rotation_every_and_iters():
    _, method, layers = _conv_model(rotation_every=2, rotation_iters=1)
    layer = layers[0][1]
    refreshed = []
    for epoch in range(6):
        before = _rotations(layer)
        method.on_step_start(layers, TrainState(step=4 * epoch, epoch=epoch, epochs=6, batch=0))
        refreshed.append(_changed(before, layer))
        if epoch == 0:
            want = _expected_refresh(layer, *before, iters=1)
            close(layer.weight_binarizer.R1, want[0], atol=1e-10)
            close(layer.weight_binarizer.R2, want[1], atol=1e-10)
    assert refreshed == [True, False, True, False, True, False]


def test_refresh_happens_before_the_first_forward_in_a_run(tmp_path, monkeypatch):
    log: dict[int, list[str]] = {}
    real_refresh, real_forward = RBNNWeightSign.refresh, RBNNWeightSign.forward

    def refresh(self, *args, **kwargs):
        log.setdefault(id(self), []).append("r")
        return real_refresh(self, *args, **kwargs)

    def forward(self, *args, **kwargs):
        log.setdefault(id(self), []).append("f" if torch.is_grad_enabled() else "e")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(RBNNWeightSign, "refresh", refresh)
    monkeypatch.setattr(RBNNWeightSign, "forward", forward)
    recipe = {
        "data": {"name": "synthetic", "synthetic_shape": [3, 8, 8], "synthetic_classes": 4,
                 "synthetic_train": 64, "synthetic_val": 16, "batch_size": 16},
        "model": {"name": "resnet20", "variant": "rbnn"},
        "method": {"name": "rbnn"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        "training": {"epochs": 2, "seed": 0},
        "logging": {"log_every": 1, "progress": "off", "tensorboard": False},
    }  # fmt: skip
    train(recipe, out=tmp_path / "run")
    assert len(log) == 18
    for seq in log.values():
        assert seq.count("r") == 2, seq  # once per epoch (4 steps each), not every step
        assert seq[0] == "r", seq  # epoch 0 included, before the first forward
        for i, e in enumerate(seq):
            if e == "r":
                assert seq[i + 1] == "f", seq  # followed by that step's training forward
        assert seq.count("f") >= 8 and "e" in seq  # 8 training steps, and validation
    ev = events(tmp_path / "run", "train")
    assert "method/rbnn/t" in ev[0] and "method/rbnn/sin_theta" in ev[0], sorted(ev[0])


def test_after_optimizer_step_metrics():
    _, method, layers = _conv_model(dtype=torch.float32)
    state = TrainState(step=3, epoch=500, epochs=1000, batch=3)
    method.on_step_start(layers, state)
    metrics = method.after_optimizer_step(layers, state)
    assert {"rbnn/t", "rbnn/sin_theta"} <= set(metrics), sorted(metrics)
    for value in metrics.values():
        assert isinstance(value, torch.Tensor) and value.ndim == 0
    assert float(metrics["rbnn/t"]) == pytest.approx(0.31622777, rel=1e-6)
    assert float(metrics["rbnn/sin_theta"]) == pytest.approx(1.0, abs=1e-6)
    wb = layers[0][1].weight_binarizer
    thetas = [0.5, -0.5, PI / 2, 1.0, 3.0, 0.0]
    set_theta(wb, thetas)
    metrics = method.after_optimizer_step(layers, state)
    want = sum(abs(math.sin(v)) for v in thetas) / 6  # one layer: both weightings agree
    assert float(metrics["rbnn/sin_theta"]) == pytest.approx(want, abs=1e-6)


def test_case_22_theta_and_alpha_are_decayed():
    model, method, layers = _conv_model(dtype=torch.float32)
    cfg = OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, decay_rule="all")
    groups = param_groups(model, method, cfg)
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    layer = layers[0][1]
    assert wd[id(layer.weight_binarizer.theta)] == 1e-4
    assert wd[id(layer.scale.alpha)] == 1e-4
    opt = build_optimizer(model, method, cfg)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    theta0 = layer.weight_binarizer.theta.detach().clone()
    opt.step()
    got = layer.weight_binarizer.theta.detach()
    assert float(got.flatten()[0]) == pytest.approx(1.57078062, abs=1e-7)
    torch.testing.assert_close(got, theta0 * (1 - 1e-5), rtol=1e-6, atol=0)


def test_case_23_composition_is_refused():
    with pytest.raises(ConfigError):
        get_method("rbnn", base="recu")
    for build in (lambda: get_method("ovsw", base="rbnn"),
                  lambda: get_method("rebnn", base="rbnn"),
                  lambda: get_method({"name": "rebnn", "base": {"name": "rbnn"}})):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            build()
        msg = str(info.value)
        assert "rbnn" in msg and "periodic" not in msg.lower(), msg


# -- export of a whole model --------------------------------------------------------------------------


def _rbnn_resnet20(**fields) -> nn.Module:
    torch.manual_seed(0)
    return binarize_(bnnkit.create_model("resnet20", variant="rbnn"), get_method("rbnn", **fields))


def test_export_refuses_the_default_naming_the_first_layer_and_the_mean():
    model = _rbnn_resnet20()
    first = binary_layers(model)[0][0]
    with pytest.raises(bnnkit.export.ExportError) as info:
        bnnkit.export.convert(model)
    msg = str(info.value)
    assert f"'{first}'" in msg and "mean" in msg.lower(), msg


def test_export_with_center_inputs_false_matches_the_float_model():
    model = _rbnn_resnet20(center_inputs=False)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.3, 0.3, generator=gen)
        for _, layer in binary_layers(model):
            th = layer.weight_binarizer.theta
            th.copy_(torch.rand(th.shape, generator=gen) * 3.0 - 1.5)
    model.eval()
    packed = bnnkit.export.convert(model)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        want, got = model(x), packed(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    for name, pl in bnnkit.export.packed_layers(packed):
        layer = model.get_submodule(name)
        c = layer.in_channels
        signs = bnnkit.export.unpack_signs(pl.weight_bits, c).permute(0, 3, 1, 2)
        assert torch.equal(signs, ref_sign(layer.sign_input()).float()), name


# -- models and recipes -------------------------------------------------------------------------------


def test_resnet20_variant_structure_and_init():
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20", variant="rbnn")
    layers = binary_layers(model)
    assert len(layers) == 18
    assert all(isinstance(m, bnnkit.nn.BinaryConv2d) and m.kernel_size == (3, 3) for _, m in layers)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 19
    assert all(bool((m.weight == 1e-8).all()) and bool((m.bias == 0).all()) for m in bns)
    fc = [m for m in model.modules() if type(m) is nn.Linear][-1]
    assert fc.in_features == 64
    assert float(fc.weight.detach().std()) == pytest.approx(math.sqrt(2 / 64), rel=0.15)
    conv = next(m for _, m in layers if tuple(m.stride) == (2, 2))  # 16 -> 32
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / (9 * 16)), rel=0.07)
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())  # avg-pool -> BN1d head
    binarize_(model, "rbnn")
    assert all(isinstance(m.weight_binarizer, RBNNWeightSign) for _, m in binary_layers(model))
    out = model.to(DT)(torch.randn(2, 3, 32, 32, dtype=DT))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def _block_of(model, layer_name):
    return model.get_submodule(layer_name.rpartition(".")[0])


def test_resnet20_option_a_shortcut_subsamples():
    model = bnnkit.create_model("resnet20", variant="rbnn")
    name = next(n for n, m in binary_layers(model) if tuple(m.stride) == (2, 2))
    block = _block_of(model, name)
    with torch.no_grad():  # the conv branches contribute exactly 0: the block is its shortcut
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.zero_()
                m.bias.zero_()
    block.eval()
    x = 0.8 * torch.rand(2, 16, 8, 8) + 0.1  # in (0, 1): hardtanh passes it unchanged
    with torch.no_grad():
        out = block(x)
    want = torch.zeros(2, 32, 4, 4)
    want[:, 8:24] = x[:, :, ::2, ::2]
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    avg = torch.zeros(2, 32, 4, 4)
    avg[:, 8:24] = F.avg_pool2d(x, 2)
    assert (out - avg).abs().max() > 0.05  # not ReCU's AvgPool2d option A


def test_resnet20_blocks_are_bireal_a_shortcut_around_every_conv():
    model = bnnkit.create_model("resnet20", variant="rbnn")
    name = next(n for n, m in binary_layers(model) if tuple(m.stride) == (1, 1))
    block = _block_of(model, name)
    bn1, bn2 = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][:2]
    with torch.no_grad():  # BN1(conv1(x)) = 0.3, BN2(conv2(.)) = 0
        for bn, bias in ((bn1, 0.3), (bn2, 0.0)):
            bn.weight.zero_()
            bn.bias.fill_(bias)
    block.eval()
    x = 0.6 * torch.rand(2, 16, 8, 8) - 0.4  # in (−0.4, 0.2)
    with torch.no_grad():
        out = block(x)
    # Bi-Real: hardtanh(0 + hardtanh(0.3 + x)) = x + 0.3; one shortcut per block would give x
    torch.testing.assert_close(out, x + 0.3, rtol=0, atol=1e-6)


def test_resnet18_cifar_variant_binary_shortcuts_default_init():
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet18_cifar", variant="rbnn")
    layers = binary_layers(model)
    assert len(layers) == 19
    ones = [m for _, m in layers if m.kernel_size == (1, 1)]
    assert len(ones) == 3 and all(tuple(m.stride) == (2, 2) for m in ones)
    assert [m.in_channels for m in ones] == [64, 128, 256]
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    first_s2 = next(m for _, m in layers if tuple(m.stride) == (2, 2) and m.kernel_size == (3, 3))
    want = 1 / math.sqrt(3 * 9 * first_s2.in_channels)  # kaiming_uniform(a = √5)
    assert float(first_s2.weight.detach().std()) == pytest.approx(want, rel=0.07)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((m.weight == 1.0).all()) for m in bns)
    binarize_(model, "rbnn")
    assert all(isinstance(m.weight_binarizer, RBNNWeightSign) for _, m in binary_layers(model))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


RECIPES = {
    "cifar10/resnet20_rbnn": ("resnet20", 1000, 18),
    "cifar10/resnet18_cifar_rbnn": ("resnet18_cifar", 1000, 19),
    "cifar10/vgg_small_rbnn": ("vgg_small", 1000, 5),
    "imagenet/resnet18_rbnn": ("resnet18", 150, 16),
    "imagenet/resnet34_rbnn": ("resnet34", 150, 32),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipes(recipe):
    model_name, epochs, convs = RECIPES[recipe]
    cfg = load_recipe(recipe)
    assert cfg.model.name == model_name
    variant = cfg.model.options.get("variant")
    if model_name in ("resnet20", "resnet18_cifar"):
        assert variant == "rbnn"  # trap 14: not the recu architecture
    (stage,) = cfg.stages
    assert isinstance(stage.method, RBNN)
    assert stage.method.t_min == pytest.approx(1e-2) and stage.method.t_max == pytest.approx(10.0)
    assert stage.optimizer.weight_decay == pytest.approx(1e-4)
    assert stage.optimizer.decay_rule == "all"  # trap 5, on ImageNet too
    assert stage.optimizer.momentum == pytest.approx(0.9) and stage.optimizer.lr == 0.1
    assert stage.training.epochs == epochs
    assert cfg.data.batch_size == (256 if epochs == 1000 else 512)
    if epochs == 150:
        assert stage.schedule.warmup_epochs == 0
    model = bnnkit.create_model(model_name, num_classes=10, **cfg.model.options)
    assert len(binary_layers(model)) == convs
    if model_name in ("resnet18", "resnet34", "resnet20"):  # BN2d γ = 1e-8 (§6.1, §6.5)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(bool((m.weight == 1e-8).all()) for m in bns)
