"""Hand-computed spec tests for ``bnnkit.binarize`` and the binary layers.

Written independently of the implementation: every expected number below is either a literal
derived by hand from the formulas in the contract (methods.md §1.1, §1.3, §1.4, §1.6 and
design.md, "Conventions": sign(0) = +1), or an independent numpy evaluation of those formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.binarize import (
    ApproxSign,
    ClippedSTESign,
    EDESign,
    IdentitySTESign,
    LearnableScale,
    MagnitudeAwareSign,
    MeanAbsScale,
    SwishSign,
    approx_sign,
    approx_sign_grad,
    clipped_ste_grad,
    clipped_ste_sign,
    ede_grad,
    ede_sign,
    get_binarizer,
    get_scale,
    identity_ste_grad,
    identity_ste_sign,
    list_binarizers,
    magnitude_aware_sign,
    register_binarizer,
    sign,
    swish_sign,
    swish_sign_grad,
)
from bnnkit.nn import BinaryConv2d, BinaryLinear

D = torch.float64


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=D)


def assert_exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=0.0)


def assert_close64(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-12) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# Points used throughout: exact 0, negative zero, tiny positive, +-clip boundary, beyond it.
X_POINTS = [-2.0, -1.0, -0.5, -0.0, 0.0, 1e-8, 0.5, 1.0, 3.0]
# sign with sign(0) = +1 (and -0.0 >= 0 is True, so also +1).
SIGN_POINTS = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
# A non-trivial upstream gradient, one entry per point.
G_POINTS = [0.3, -1.2, 2.0, 0.7, -0.9, 1.5, -2.5, 4.0, 0.1]


# --------------------------------------------------------------------------------------------
# sign
# --------------------------------------------------------------------------------------------


def test_sign_values_zero_maps_to_plus_one():
    assert_exact(sign(t64(X_POINTS)), t64(SIGN_POINTS))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sign_keeps_dtype_and_shape(dtype):
    x = torch.tensor([[0.0, -3.0], [2.0, -0.25]], dtype=dtype)
    y = sign(x)
    assert y.dtype == dtype
    assert y.shape == x.shape
    assert_exact(y, torch.tensor([[1.0, -1.0], [1.0, -1.0]], dtype=dtype))


def test_sign_output_only_two_values_on_random_input():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 6, dtype=D)
    x[0, 0, 0] = 0.0
    y = sign(x)
    assert set(y.unique().tolist()) <= {-1.0, 1.0}
    assert_exact(y, torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x)))


# --------------------------------------------------------------------------------------------
# Pure surrogate derivatives, hand-picked literals
# --------------------------------------------------------------------------------------------


def test_identity_ste_grad_is_one_everywhere():
    x = t64([[-5.0, -1.0, 0.0], [0.3, 1.0, 7.0]])
    g = identity_ste_grad(x)
    assert g.shape == x.shape
    assert_exact(g.to(D), torch.ones(2, 3, dtype=D))


def test_clipped_ste_grad_default_clip_boundary_included():
    x = t64([-1.5, -1.0, -0.5, 0.0, 0.999, 1.0, 1.0001, 2.0])
    assert_exact(clipped_ste_grad(x).to(D), t64([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]))


def test_clipped_ste_grad_custom_clip_value():
    x = t64([-0.6, -0.5, 0.0, 0.5, 0.51, 1.0])
    assert_exact(clipped_ste_grad(x, clip_value=0.5).to(D), t64([0.0, 1.0, 1.0, 1.0, 0.0, 0.0]))
    # clip_value 2: everything within [-2, 2] passes, including both ends.
    x = t64([-2.5, -2.0, 1.9, 2.0, 2.01])
    assert_exact(clipped_ste_grad(x, clip_value=2.0).to(D), t64([0.0, 1.0, 1.0, 1.0, 0.0]))


def test_approx_sign_grad_literals():
    # max(0, 2 - 2|x|): -1.5 -> 0; -1 -> 0; -0.5 -> 1; 0 -> 2; 0.25 -> 1.5; 1 -> 0;
    # -0.25 -> 1.5; 0.75 -> 0.5; 3 -> 0 (clamped, not -4).
    x = t64([-1.5, -1.0, -0.5, 0.0, 0.25, 1.0, -0.25, 0.75, 3.0])
    expected = t64([0.0, 0.0, 1.0, 2.0, 1.5, 0.0, 1.5, 0.5, 0.0])
    assert_exact(approx_sign_grad(x), expected)


def test_ede_grad_literals():
    # k * t * (1 - tanh(t x)^2) with t = 2, k = 0.5 -> k*t = 1.
    # x = 0 -> 1; x = +-atanh(0.5)/2 -> tanh = +-0.5 -> 0.75; x = atanh(0.8)/2 -> 1 - 0.64 = 0.36.
    a5 = math.atanh(0.5) / 2.0
    a8 = math.atanh(0.8) / 2.0
    x = t64([0.0, a5, -a5, a8])
    expected = t64([1.0, 0.75, 0.75, 0.36])
    assert_close64(ede_grad(x, 2.0, 0.5), expected)
    # t and k given as 0-d tensors give the same numbers.
    assert_close64(ede_grad(x, t64(2.0), t64(0.5)), expected)
    # t = 1, k = 3: x = 0 -> 3; x = atanh(0.5) -> 3 * 0.75 = 2.25.
    x = t64([0.0, math.atanh(0.5)])
    assert_close64(ede_grad(x, 1.0, 3.0), t64([3.0, 2.25]))


def test_swish_sign_grad_literals():
    # beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x)), beta = 5:
    # x = 0:    5 * 2 / 2 = 5
    # x = +-0.2 (beta x = 1): 5 (2 - tanh 0.5) / (1 + cosh 1)
    #           = 5 * (2 - 0.46211715726) / 2.54308063482 = 3.0236611881
    # x = 0.5 (beta x = 2.5): 5 (2 - 2.5 tanh 1.25) / (1 + cosh 2.5)
    #           = 5 * (2 - 2.12070910) / 7.13228954 = -0.0846215652  (SS overshoots: negative)
    x = t64([0.0, 0.2, -0.2, 0.5])
    expected = t64([5.0, 3.0236611881001530, 3.0236611881001530, -0.0846215652336886])
    assert_close64(swish_sign_grad(x), expected, tol=1e-10)
    assert_close64(swish_sign_grad(x, beta=5.0), expected, tol=1e-10)
    # beta = 2: x = 0 -> 2; x = 1 -> 2 (2 - 2 tanh 1) / (1 + cosh 2) = 0.2002486748
    x = t64([0.0, 1.0])
    assert_close64(swish_sign_grad(x, beta=2.0), t64([2.0, 0.20024867477882768]), tol=1e-10)


# --------------------------------------------------------------------------------------------
# Independent numpy evaluation on random inputs
# --------------------------------------------------------------------------------------------


def _random_x(n: int = 2000, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n) * 1.5


def _np_approx(x):
    return np.maximum(0.0, 2.0 - 2.0 * np.abs(x))


def _np_clipped(x, c=1.0):
    return (np.abs(x) <= c).astype(np.float64)


def _np_ede(x, t, k):
    return k * t * (1.0 - np.tanh(t * x) ** 2)


def _np_swish_grad(x, beta=5.0):
    return beta * (2.0 - beta * x * np.tanh(beta * x / 2.0)) / (1.0 + np.cosh(beta * x))


def _np_ss(x, beta=5.0):
    s = 1.0 / (1.0 + np.exp(-beta * x))
    return 2.0 * s * (1.0 + beta * x * (1.0 - s)) - 1.0


def test_grad_functions_match_numpy_on_random_inputs():
    xn = _random_x()
    x = torch.from_numpy(xn)
    np.testing.assert_allclose(identity_ste_grad(x).double().numpy(), np.ones_like(xn))
    np.testing.assert_allclose(clipped_ste_grad(x).double().numpy(), _np_clipped(xn))
    np.testing.assert_allclose(
        clipped_ste_grad(x, clip_value=0.7).double().numpy(), _np_clipped(xn, 0.7)
    )
    np.testing.assert_allclose(approx_sign_grad(x).numpy(), _np_approx(xn), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        ede_grad(x, 3.0, 0.25).numpy(), _np_ede(xn, 3.0, 0.25), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        swish_sign_grad(x).numpy(), _np_swish_grad(xn), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        swish_sign_grad(x, beta=1.5).numpy(), _np_swish_grad(xn, 1.5), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("beta", [1.0, 2.0, 5.0, 10.0])
def test_swish_sign_grad_is_derivative_of_ss_finite_difference(beta):
    xn = np.linspace(-2.0, 2.0, 401)
    h = 1e-6
    fd = (_np_ss(xn + h, beta) - _np_ss(xn - h, beta)) / (2.0 * h)
    got = swish_sign_grad(torch.from_numpy(xn), beta=beta).numpy()
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-6)


def test_swish_ss_limits_and_grad_symmetry():
    # sanity of the reference SS itself: SS(0) = 0, SS(+-large) -> +-1
    assert _np_ss(np.array([0.0]))[0] == pytest.approx(0.0, abs=1e-15)
    assert _np_ss(np.array([10.0]))[0] == pytest.approx(1.0, abs=1e-12)
    x = t64([0.1, 0.3, 0.7, 1.3])
    assert_close64(swish_sign_grad(x), swish_sign_grad(-x))


# --------------------------------------------------------------------------------------------
# Differentiable binarizers: forward = sign, backward = surrogate * g
# --------------------------------------------------------------------------------------------


def _fwd_bwd(fn, values, g_values):
    x = t64(values).requires_grad_()
    y = fn(x)
    y.backward(t64(g_values))
    return y.detach(), x.grad


# Hand-derived surrogate on X_POINTS = [-2, -1, -0.5, -0, 0, 1e-8, 0.5, 1, 3]
IDENTITY_SUR = [1.0] * 9
CLIPPED_SUR = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
APPROX_SUR = [0.0, 0.0, 1.0, 2.0, 2.0, 2.0 - 2e-8, 1.0, 0.0, 0.0]

DIFFERENTIABLE = [
    ("identity_ste", identity_ste_sign, IdentitySTESign, IDENTITY_SUR),
    ("clipped_ste", clipped_ste_sign, ClippedSTESign, CLIPPED_SUR),
    ("approx_sign", approx_sign, ApproxSign, APPROX_SUR),
]


@pytest.mark.parametrize("name,fn,cls,sur", DIFFERENTIABLE, ids=[d[0] for d in DIFFERENTIABLE])
def test_differentiable_binarizer_forward_and_backward_literals(name, fn, cls, sur):
    y, grad = _fwd_bwd(fn, X_POINTS, G_POINTS)
    assert_exact(y, t64(SIGN_POINTS))
    expected = t64([s * g for s, g in zip(sur, G_POINTS, strict=True)])
    assert_close64(grad, expected)
    # module version computes the same thing
    y_m, grad_m = _fwd_bwd(cls(), X_POINTS, G_POINTS)
    assert_exact(y_m, t64(SIGN_POINTS))
    assert_close64(grad_m, expected)


def test_approx_sign_backward_literals_from_brief():
    # grad at -1.5, -1, -0.5, 0, 0.25, 1 is 0, 0, 1, 2, 1.5, 0; times g
    g = [2.0, -3.0, 0.5, -1.5, 4.0, 7.0]
    y, grad = _fwd_bwd(approx_sign, [-1.5, -1.0, -0.5, 0.0, 0.25, 1.0], g)
    assert_exact(y, t64([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]))
    assert_close64(grad, t64([0.0, 0.0, 0.5, -3.0, 6.0, 0.0]))


def test_approx_sign_matches_straight_through_polynomial_on_random():
    # Independent reference: sign.detach() - F.detach() + F with the Bi-Real polynomial F.
    xn = _random_x(500, seed=2)
    gn = np.random.default_rng(3).standard_normal(500)
    x = torch.from_numpy(xn).requires_grad_()
    approx_sign(x).backward(torch.from_numpy(gn))
    np.testing.assert_allclose(x.grad.numpy(), _np_approx(xn) * gn, rtol=1e-12, atol=1e-12)

    xr = torch.from_numpy(xn).requires_grad_()
    poly = torch.where(
        xr < -1,
        -torch.ones_like(xr),
        torch.where(
            xr < 0, 2 * xr + xr * xr, torch.where(xr < 1, 2 * xr - xr * xr, torch.ones_like(xr))
        ),
    )
    hard = torch.where(xr >= 0, 1.0, -1.0).to(D)
    (hard - poly.detach() + poly).backward(torch.from_numpy(gn))
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "fn,np_sur",
    [
        (identity_ste_sign, lambda x: np.ones_like(x)),
        (clipped_ste_sign, _np_clipped),
        (approx_sign, _np_approx),
        (swish_sign, _np_swish_grad),
    ],
    ids=["identity", "clipped", "approx", "swish"],
)
def test_differentiable_binarizer_backward_matches_numpy(fn, np_sur):
    xn = _random_x(1000, seed=4)
    gn = np.random.default_rng(5).standard_normal(1000)
    x = torch.from_numpy(xn).requires_grad_()
    y = fn(x)
    np.testing.assert_array_equal(y.detach().numpy(), np.where(xn >= 0, 1.0, -1.0))
    y.backward(torch.from_numpy(gn))
    np.testing.assert_allclose(x.grad.numpy(), np_sur(xn) * gn, rtol=1e-9, atol=1e-12)


def test_swish_sign_forward_is_sign_and_backward_literals():
    # default beta = 5; surrogate at 0, 0.2, -0.2, 0.5 from test_swish_sign_grad_literals
    sur = [5.0, 3.0236611881001530, 3.0236611881001530, -0.0846215652336886]
    g = [0.5, -2.0, 3.0, 10.0]
    for f in (swish_sign, SwishSign()):
        y, grad = _fwd_bwd(f, [0.0, 0.2, -0.2, 0.5], g)
        assert_exact(y, t64([1.0, 1.0, -1.0, 1.0]))
        assert_close64(grad, t64([s * gg for s, gg in zip(sur, g, strict=True)]), tol=1e-10)


def test_binarizers_work_in_float32():
    x = torch.tensor([-1.5, -0.5, 0.0, 0.25, 2.0], dtype=torch.float32, requires_grad=True)
    y = approx_sign(x)
    assert y.dtype == torch.float32
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0, 2.0, 1.5, 0.0]))


# --------------------------------------------------------------------------------------------
# EDE
# --------------------------------------------------------------------------------------------


def test_ede_sign_function_forward_backward():
    a5 = math.atanh(0.5) / 2.0
    # t = 2, k = 0.5 -> surrogate [1, 0.75, 0.75, ~0] at [0, a5, -a5, 10]
    # (at x = 10, 1 - tanh(20)^2 = 1.7e-17, i.e. 0 to within tolerance)
    g = [2.0, -4.0, 8.0, 5.0]
    y, grad = _fwd_bwd(lambda x: ede_sign(x, 2.0, 0.5), [0.0, a5, -a5, 10.0], g)
    assert_exact(y, t64([1.0, 1.0, -1.0, 1.0]))
    assert_close64(grad, t64([2.0, -3.0, 6.0, 0.0]))


def test_ede_module_buffers_in_state_dict():
    m = EDESign(t=2.0, k=0.5)
    sd = m.state_dict()
    assert "t" in sd and "k" in sd
    assert dict(m.named_buffers())["t"].ndim == 0
    assert dict(m.named_buffers())["k"].ndim == 0
    assert m.t.is_floating_point() and m.k.is_floating_point()
    assert float(m.t) == 2.0 and float(m.k) == 0.5
    assert "t" not in dict(m.named_parameters()) and "k" not in dict(m.named_parameters())


def test_ede_module_backward_follows_buffers_written_in_place():
    x_vals = [0.0, math.atanh(0.5) / 2.0, -0.3]
    g = [1.0, -2.0, 0.5]
    m = EDESign(t=2.0, k=0.5)
    y, grad = _fwd_bwd(m, x_vals, g)
    assert_exact(y, t64([1.0, 1.0, -1.0]))
    # k t = 1: [1*1, 0.75*-2, (1 - tanh(-0.6)^2) * 0.5]
    assert_close64(grad, t64([1.0, -1.5, (1.0 - math.tanh(-0.6) ** 2) * 0.5]))

    # write new values in place: t = 1, k = 3
    with torch.no_grad():
        m.t.fill_(1.0)
        m.k.fill_(3.0)
    _, grad2 = _fwd_bwd(m, x_vals, g)
    # 3 * 1 * (1 - tanh(x)^2) * g
    exp2 = [3.0 * (1.0 - math.tanh(v) ** 2) * gg for v, gg in zip(x_vals, g, strict=True)]
    assert_close64(grad2, t64(exp2))
    assert exp2[0] == 3.0  # sanity: differs from the first backward (1.0)

    # loading a state_dict also changes the backward
    m2 = EDESign(t=5.0, k=5.0)
    m2.load_state_dict(m.state_dict())
    _, grad3 = _fwd_bwd(m2, x_vals, g)
    assert_close64(grad3, t64(exp2))


def test_ede_module_matches_numpy_on_random():
    xn = _random_x(800, seed=6)
    gn = np.random.default_rng(7).standard_normal(800)
    m = EDESign(t=0.7, k=1.0 / 0.7)
    x = torch.from_numpy(xn).requires_grad_()
    y = m(x)
    np.testing.assert_array_equal(y.detach().numpy(), np.where(xn >= 0, 1.0, -1.0))
    y.backward(torch.from_numpy(gn))
    np.testing.assert_allclose(
        x.grad.numpy(), _np_ede(xn, 0.7, 1.0 / 0.7) * gn, rtol=1e-6, atol=1e-9
    )


# --------------------------------------------------------------------------------------------
# Magnitude-aware sign
# --------------------------------------------------------------------------------------------

# x = [[1, -2, 0], [-0.5, 0.25, 4]]
# alpha_0 = (1 + 2 + 0) / 3 = 1;  alpha_1 = (0.5 + 0.25 + 4) / 3 = 4.75 / 3
MA_X = [[1.0, -2.0, 0.0], [-0.5, 0.25, 4.0]]
A1 = 4.75 / 3.0
MA_Y = [[1.0, -1.0, 1.0], [-A1, A1, A1]]
MA_G = [[0.5, 2.0, -1.0], [3.0, -2.0, 1.0]]
# mask |x| <= 1: [[1, 0, 1], [1, 1, 0]]
# grad = alpha_c * mask * g = [[0.5, 0, -1], [3 A1, -2 A1, 0]]
MA_GRAD = [[0.5, 0.0, -1.0], [3.0 * A1, -2.0 * A1, 0.0]]


def test_magnitude_aware_sign_2d_literals():
    y, grad = _fwd_bwd(magnitude_aware_sign, MA_X, MA_G)
    assert_close64(y, t64(MA_Y))
    assert_close64(grad, t64(MA_GRAD))
    y_m, grad_m = _fwd_bwd(MagnitudeAwareSign(), MA_X, MA_G)
    assert_close64(y_m, t64(MA_Y))
    assert_close64(grad_m, t64(MA_GRAD))


def test_magnitude_aware_sign_custom_clip_value():
    # clip 2: mask [[1, 1, 1], [1, 1, 0]] (|-2| <= 2 included)
    y, grad = _fwd_bwd(lambda x: magnitude_aware_sign(x, clip_value=2.0), MA_X, MA_G)
    assert_close64(y, t64(MA_Y))
    assert_close64(grad, t64([[0.5, 2.0, -1.0], [3.0 * A1, -2.0 * A1, 0.0]]))


def test_magnitude_aware_sign_4d_per_output_channel():
    # shape (2, 1, 2, 2)
    # channel 0: (|1| + |-3| + |.5| + |.5|) / 4 = 5/4 = 1.25, sign [1, -1, 1, 1]
    # channel 1: (.2 + .2 + 0 + .2) / 4 = 0.6/4 = 0.15, sign [-1, 1, 1 (at 0), -1]
    x = [[[[1.0, -3.0], [0.5, 0.5]]], [[[-0.2, 0.2], [0.0, -0.2]]]]
    g = [[[[1.0, 1.0], [2.0, -1.0]]], [[[4.0, -4.0], [2.0, 1.0]]]]
    y, grad = _fwd_bwd(magnitude_aware_sign, x, g)
    exp_y = [[[[1.25, -1.25], [1.25, 1.25]]], [[[-0.15, 0.15], [0.15, -0.15]]]]
    # mask: ch0 [1, 0, 1, 1], ch1 all 1
    exp_g = [[[[1.25, 0.0], [2.5, -1.25]]], [[[0.6, -0.6], [0.3, 0.15]]]]
    assert_close64(y, t64(exp_y))
    assert_close64(grad, t64(exp_g))


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

CANONICAL = [
    "approx_sign",
    "clipped_ste",
    "ede",
    "identity_ste",
    "magnitude_aware_sign",
    "swish_sign",
]


def test_list_binarizers_canonical_sorted():
    names = list_binarizers()
    assert isinstance(names, list)
    assert all(isinstance(n, str) for n in names)
    assert names == sorted(names)
    assert set(CANONICAL) <= set(names)
    assert "ste_sign" not in names  # alias, not canonical


@pytest.mark.parametrize(
    "name,cls",
    [
        ("identity_ste", IdentitySTESign),
        ("clipped_ste", ClippedSTESign),
        ("approx_sign", ApproxSign),
        ("ede", EDESign),
        ("swish_sign", SwishSign),
        ("magnitude_aware_sign", MagnitudeAwareSign),
        ("ste_sign", ClippedSTESign),
    ],
)
def test_get_binarizer_by_name(name, cls):
    m = get_binarizer(name)
    assert isinstance(m, cls)
    assert isinstance(m, nn.Module)


def test_get_binarizer_none_and_module_passthrough():
    assert get_binarizer(None) is None
    m = ApproxSign()
    assert get_binarizer(m) is m
    e = EDESign(t=0.5, k=2.0)
    assert get_binarizer(e) is e


def test_get_binarizer_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_binarizer("definitely_not_a_binarizer")
    msg = str(info.value)
    for n in CANONICAL:
        assert n in msg, f"{n!r} missing from error message: {msg}"


def test_register_binarizer_is_exported():
    assert callable(register_binarizer)


# --------------------------------------------------------------------------------------------
# Scales
# --------------------------------------------------------------------------------------------

# W: shape (3, 2, 1, 2)
# ch0 entries [1, -2, 3, -4] -> mean |.| = 10/4 = 2.5
# ch1 entries [0, 0, 0, 0.8] -> 0.8/4 = 0.2
# ch2 entries [-1, -1, -1, -1] -> 1
W4 = [
    [[[1.0, -2.0]], [[3.0, -4.0]]],
    [[[0.0, 0.0]], [[0.0, 0.8]]],
    [[[-1.0, -1.0]], [[-1.0, -1.0]]],
]
W4_ALPHA = [2.5, 0.2, 1.0]


def test_mean_abs_scale_4d_values_shape_detached():
    w = t64(W4).requires_grad_()
    a = MeanAbsScale()(w)
    assert a.shape == (3, 1, 1, 1)
    assert_close64(a.reshape(-1), t64(W4_ALPHA))
    assert not a.requires_grad


def test_mean_abs_scale_2d():
    w = t64(MA_X).requires_grad_()
    a = MeanAbsScale()(w)
    assert a.shape == (2, 1)
    assert_close64(a.reshape(-1), t64([1.0, A1]))
    assert not a.requires_grad


def test_learnable_scale_ones():
    m = LearnableScale(3, init="ones")
    assert isinstance(m.alpha, nn.Parameter)
    assert "alpha" in dict(m.named_parameters())
    assert m.alpha.shape == (3,)
    assert_exact(m.alpha.detach().double(), torch.ones(3, dtype=D))
    a = m(t64(W4))
    assert a.shape == (3, 1, 1, 1)
    a.sum().backward()
    assert m.alpha.grad is not None
    assert_exact(m.alpha.grad.double(), torch.ones(3, dtype=D))


def test_learnable_scale_uniform():
    torch.manual_seed(0)
    m = LearnableScale(2000, init="uniform")
    a = m.alpha.detach()
    assert a.shape == (2000,)
    assert float(a.min()) >= 0.0 and float(a.max()) < 1.0
    assert 0.45 < float(a.mean()) < 0.55
    assert float(a.std()) > 0.2  # U[0,1) has std 0.289; not a constant


def test_learnable_scale_mean_abs_init_and_2d_output():
    m = LearnableScale(3, init="mean_abs", weight=t64(W4))
    assert_close64(m.alpha.detach().double(), t64(W4_ALPHA))
    assert m.alpha.requires_grad
    m2 = LearnableScale(2, init="mean_abs", weight=t64(MA_X))
    assert_close64(m2.alpha.detach().double(), t64([1.0, A1]))
    out = m2(t64(MA_X))
    assert out.shape == (2, 1)
    assert_close64(out.detach().double().reshape(-1), t64([1.0, A1]))


def test_get_scale_registry():
    assert get_scale(None) is None
    assert get_scale("none") is None
    assert isinstance(get_scale("mean_abs"), MeanAbsScale)
    s = get_scale("learnable", weight=t64(W4))
    assert isinstance(s, LearnableScale)
    assert s.alpha.shape == (3,)
    assert_close64(s.alpha.detach().double(), t64(W4_ALPHA))


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(stride=2, padding=1),
        dict(padding=2, dilation=2, groups=2, bias=False),
        dict(padding=1, padding_mode="reflect"),
    ],
    ids=["default", "stride2", "dil_groups_nobias", "reflect"],
)
def test_binary_conv2d_without_binarizers_equals_conv2d(kwargs):
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 6, 3, dtype=D, **kwargs)
    layer = BinaryConv2d(4, 6, 3, dtype=D, **kwargs)
    assert layer.weight.shape == ref.weight.shape
    assert (layer.bias is None) == (ref.bias is None)
    with torch.no_grad():
        layer.weight.copy_(ref.weight)
        if ref.bias is not None:
            layer.bias.copy_(ref.bias)
    x = torch.randn(2, 4, 7, 7, dtype=D)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    y_ref = ref(x1)
    y = layer(x2)
    assert_close64(y, y_ref, tol=0.0)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y.backward(g)
    assert_close64(x2.grad, x1.grad)
    assert_close64(layer.weight.grad, ref.weight.grad)
    assert_close64(layer.binarized_weight(), ref.weight.detach())
    assert_exact(layer.binarized_input(x), x)


@pytest.mark.parametrize("bias", [True, False])
def test_binary_linear_without_binarizers_equals_linear(bias):
    torch.manual_seed(1)
    ref = nn.Linear(5, 3, bias=bias, dtype=D)
    layer = BinaryLinear(5, 3, bias=bias, dtype=D)
    with torch.no_grad():
        layer.weight.copy_(ref.weight)
        if bias:
            layer.bias.copy_(ref.bias)
    x = torch.randn(4, 5, dtype=D)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    y_ref, y = ref(x1), layer(x2)
    assert_close64(y, y_ref, tol=0.0)
    g = torch.randn_like(y)
    y_ref.backward(g)
    y.backward(g)
    assert_close64(x2.grad, x1.grad)
    assert_close64(layer.weight.grad, ref.weight.grad)


# Conv weight (2, 1, 2, 2):
# ch0 [[0.5, -1.5], [1.0, 0.0]] -> alpha 3/4 = 0.75, sign [[1, -1], [1, 1]], mask |w|<=1 [[1,0],[1,1]]
# ch1 [[-0.2, 0.4], [-0.6, 2.0]] -> alpha 3.2/4 = 0.8, sign [[-1, 1], [-1, 1]], mask [[1,1],[1,0]]
CONV_W = [[[[0.5, -1.5], [1.0, 0.0]]], [[[-0.2, 0.4], [-0.6, 2.0]]]]
CONV_BW = [[[[0.75, -0.75], [0.75, 0.75]]], [[[-0.8, 0.8], [-0.8, 0.8]]]]
CONV_G = [[[[1.0, 2.0], [-3.0, 4.0]]], [[[0.5, -1.0], [2.0, 3.0]]]]
# grad W = alpha * mask * G
CONV_WGRAD = [[[[0.75, 0.0], [-2.25, 3.0]]], [[[0.4, -0.8], [1.6, 0.0]]]]


def _hand_conv_layer(**kw):
    layer = BinaryConv2d(1, 2, 2, bias=False, dtype=D, **kw)
    with torch.no_grad():
        layer.weight.copy_(t64(CONV_W))
    return layer


def test_binary_conv2d_clipped_ste_mean_abs_binarized_weight_and_grad():
    layer = _hand_conv_layer(weight_binarizer="clipped_ste", scale="mean_abs")
    bw = layer.binarized_weight()
    assert_close64(bw.detach(), t64(CONV_BW))
    bw.backward(t64(CONV_G))
    assert_close64(layer.weight.grad, t64(CONV_WGRAD))


def test_binary_conv2d_clipped_ste_mean_abs_forward_and_weight_grad_through_conv():
    layer = _hand_conv_layer(weight_binarizer="clipped_ste", scale="mean_abs")
    torch.manual_seed(2)
    x = torch.randn(3, 1, 4, 4, dtype=D)
    y = layer(x)
    y_ref = F.conv2d(x, t64(CONV_BW))
    assert_close64(y, y_ref)
    # dL/d(bw) for L = sum(y * g), computed with the hand-binarized weight as a leaf
    g = torch.randn_like(y)
    bw_leaf = t64(CONV_BW).requires_grad_()
    (F.conv2d(x, bw_leaf) * g).sum().backward()
    (y * g).sum().backward()
    alpha = t64([0.75, 0.8]).view(2, 1, 1, 1)
    mask = (t64(CONV_W).abs() <= 1.0).to(D)
    assert_close64(layer.weight.grad, alpha * mask * bw_leaf.grad)


def test_binary_conv2d_module_binarizer_and_module_scale():
    # EDE module as weight binarizer, learnable scale (ones, then set by hand)
    ede = EDESign(t=2.0, k=0.5)
    scale = LearnableScale(2, init="ones")
    layer = BinaryConv2d(1, 2, 2, bias=False, weight_binarizer=ede, scale=scale)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(CONV_W))
        scale.alpha.copy_(torch.tensor([2.0, 3.0]))
    bw = layer.binarized_weight()
    sgn = torch.tensor([[[[1.0, -1.0], [1.0, 1.0]]], [[[-1.0, 1.0], [-1.0, 1.0]]]])
    exp_bw = torch.tensor([2.0, 3.0]).view(2, 1, 1, 1) * sgn
    torch.testing.assert_close(bw.detach(), exp_bw)
    bw.backward(torch.ones_like(bw))
    # d/dW = alpha * k t (1 - tanh(t W)^2) (k t = 1); d/d alpha = sum over the channel of sign
    w = torch.tensor(CONV_W, dtype=D)
    exp_wg = t64([2.0, 3.0]).view(2, 1, 1, 1) * (1.0 - torch.tanh(2.0 * w) ** 2)
    torch.testing.assert_close(layer.weight.grad.double(), exp_wg, rtol=1e-5, atol=1e-6)
    # ch0 sign sum = 1 - 1 + 1 + 1 = 2 ; ch1 = -1 + 1 - 1 + 1 = 0
    torch.testing.assert_close(scale.alpha.grad, torch.tensor([2.0, 0.0]))


def test_binary_conv2d_input_binarizer_approx_sign():
    layer = BinaryConv2d(1, 2, 2, bias=True, dtype=D, input_binarizer="approx_sign")
    with torch.no_grad():
        layer.weight.copy_(t64(CONV_W))
        layer.bias.copy_(t64([0.5, -1.0]))
    # input with exact zeros, values inside and outside [-1, 1]
    xv = t64([[[[0.0, -0.5, 2.0], [0.25, -1.5, 0.75], [-0.25, 0.0, 1.0]]]])
    assert_exact(
        layer.binarized_input(xv),
        t64([[[[1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]]]]),
    )
    x = xv.clone().requires_grad_()
    y = layer(x)
    # reference: straight-through with the hand-written surrogate
    xr = xv.clone().requires_grad_()
    hard = torch.where(xr >= 0, 1.0, -1.0).to(D)
    sur = torch.clamp(2.0 - 2.0 * xr.abs(), min=0.0)
    # value = hard (the added term is exactly 0); derivative wrt xr = sur
    xb = hard + sur.detach() * (xr - xr.detach())
    y_ref = F.conv2d(xb, t64(CONV_W), t64([0.5, -1.0]))
    assert_close64(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert_close64(x.grad, xr.grad)
    # weight is not binarized: weight grad is the float conv weight grad
    assert_close64(layer.binarized_weight(), t64(CONV_W))


def test_binary_linear_binarized_weight_mean_abs_ste_sign():
    layer = BinaryLinear(3, 2, bias=True, dtype=D, weight_binarizer="ste_sign", scale="mean_abs")
    with torch.no_grad():
        layer.weight.copy_(t64(MA_X))
        layer.bias.copy_(t64([0.1, -0.2]))
    bw = layer.binarized_weight()
    assert_close64(bw.detach(), t64(MA_Y))
    x = t64([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5]])
    y = layer(x)
    # row0: [1, -1, 1] . [1,2,3] = 2 ; + 0.1 -> 2.1 ; [1,-1,1].[-1,0,.5] = -0.5 ; -> -0.4
    # row1: A1 * ([-1,1,1].[1,2,3]) = 4 A1 ; -0.2 ; A1 * ([-1,1,1].[-1,0,.5]) = 1.5 A1 ; -0.2
    exp = t64([[2.1, 4.0 * A1 - 0.2], [-0.4, 1.5 * A1 - 0.2]])
    assert_close64(y, exp)
    y.backward(torch.ones_like(y))
    # dL/dbw = g^T x = column sums of x per output: [0, 2, 3.5] for both outputs
    # grad W = alpha * mask * [0, 2, 3.5]; mask row0 [1,0,1], row1 [1,1,0]
    assert_close64(layer.weight.grad, t64([[0.0, 0.0, 3.5], [0.0, 2.0 * A1, 0.0]]))
