"""The binarizers' generated kernels (bnnkit.binarize.kernels): hand values, equality with the
eager path, the forward's choice carried to the backward, and the switch itself."""

from __future__ import annotations

import math

import pytest
import torch

from bnnkit.binarize import autograd as A
from bnnkit.binarize import kernels as K

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BIG = (4, 8, 33, 37)  # 39,072 elements >= MIN_FUSED_NUMEL, sizes not multiples of the vector width


def _big(seed: int = 0, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(BIG, generator=g) * scale).to(dtype)


def _padded(values: list[float]) -> torch.Tensor:
    """``values`` at the start of a tensor of shape BIG (zeros after), so the fused path runs."""
    x = torch.zeros(BIG).flatten()
    x[: len(values)] = torch.tensor(values)
    return x.view(BIG)


def test_big_is_big_and_small_is_eager():
    assert math.prod(BIG) >= K.MIN_FUSED_NUMEL
    with K.fused_kernels():
        assert K.use_fused(torch.zeros(BIG))
        assert not K.use_fused(torch.zeros(K.MIN_FUSED_NUMEL - 1))
    assert not K.use_fused(torch.zeros(BIG))  # outside the block
    with K.fused_kernels(False):
        assert not K.use_fused(torch.zeros(BIG))


def test_not_fused_while_being_compiled(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with K.fused_kernels():
        assert not K.use_fused(torch.zeros(BIG))


def test_blocks_nest_and_restore():
    with K.fused_kernels():
        with K.fused_kernels(False):
            assert not K.use_fused(torch.zeros(BIG))
        assert K.use_fused(torch.zeros(BIG))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sign_hand_values_and_bit_identity(dtype):
    vals = [-0.0, 0.0, -1e-30, 1e-30, -1.0, 1.0, -3.5, float("inf"), -float("inf")]
    want = [1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
    if dtype == torch.bfloat16:  # 1e-30 is representable in bf16 (fp32's exponent range)
        assert torch.tensor(1e-30, dtype=dtype) != 0
    x = _padded(vals).to(dtype)
    fused = K.sign(True, x)
    assert fused.dtype == dtype
    assert fused.flatten()[: len(vals)].tolist() == want
    assert torch.equal(fused, K.sign(False, x))
    r = _big(1, dtype)
    assert torch.equal(K.sign(True, r), K.sign(False, r))


def test_approx_grad_hand_values():
    # g * max(0, 2 - 2|x|) at g = 3
    vals = [-2.0, -1.0, -0.5, -0.0, 0.25, 1.0, 3.0]
    want = [0.0, 0.0, 3.0, 6.0, 4.5, 0.0, 0.0]
    x, g = _padded(vals), torch.full(BIG, 3.0)
    for fused in (False, True):
        assert K.approx_grad(fused, x, g).flatten()[: len(vals)].tolist() == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_approx_grad_fused_equals_eager(dtype):
    x, g = _big(2, dtype, 0.8), _big(3, dtype)
    a, b = K.approx_grad(True, x, g), K.approx_grad(False, x, g)
    assert a.dtype == b.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_shifted_sign_and_grad():
    x, bias = _big(4), torch.linspace(-1, 1, BIG[1])
    s, out = K.shifted_sign(True, x, bias)
    torch.testing.assert_close(s, x + bias.view(1, -1, 1, 1), rtol=0, atol=0)
    assert torch.equal(out, torch.where(s >= 0, 1.0, -1.0))
    g = _big(5)
    gs, gb = K.shifted_approx_grad(True, s, g)
    want = g * (2 - 2 * s.abs()).clamp_min(0)
    torch.testing.assert_close(gs, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gb, want.sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-4)
    # a shift of -0.0 must not turn a +0 input into -0 (sign(+0) = +1)
    s0, out0 = K.shifted_sign(True, torch.zeros(BIG), torch.full((BIG[1],), -0.0))
    assert torch.equal(out0, torch.ones(BIG)) and not torch.signbit(s0).any()


def test_sample_std_hand_values():
    # sample 0: values 1..n of a known variance; sample 1: constant 2 (var 0 -> sqrt(1e-5))
    n = math.prod(BIG[1:])
    x = torch.zeros(BIG)
    x[0] = torch.arange(1, n + 1, dtype=torch.float64).view(BIG[1:]).float()
    x[1] = 2.0
    var0 = n * (n + 1) / 12.0  # unbiased variance of 1..n
    for fused in (False, True):
        sigma, mean = K.sample_std(fused, x)
        assert mean[0].item() == pytest.approx((n + 1) / 2, rel=1e-6)
        assert sigma[0].item() == pytest.approx(math.sqrt(var0 + 1e-5), rel=1e-4)
        assert sigma[1].item() == pytest.approx(math.sqrt(1e-5), rel=1e-3)
        assert mean[2].item() == 0.0 and sigma[2].item() == pytest.approx(math.sqrt(1e-5))


@pytest.mark.parametrize("detach", [True, False])
def test_std_norm_grad_fused_equals_eager_and_autograd(detach):
    x, g = _big(6, scale=1.7), _big(7)
    sigma, mean = K.sample_std(False, x)
    a = K.std_norm_grad(True, x, g, sigma, mean, detach)
    b = K.std_norm_grad(False, x, g, sigma, mean, detach)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # against autograd through the unfused expression F(x / sigma) with ApproxSign's F
    xd = x.double().requires_grad_()
    flat = xd.flatten(1)
    sd = torch.sqrt(flat.var(dim=1, unbiased=True) + 1e-5).view(-1, 1, 1, 1)
    if detach:
        sd = sd.detach()
    h = xd / sd
    f = torch.where(
        h < -1, -1.0, torch.where(h < 0, 2 * h + h * h, torch.where(h < 1, 2 * h - h * h, 1.0))
    )
    f.backward(g.double())
    torch.testing.assert_close(a.double(), xd.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("which", ["ede", "rbnn"])
def test_scheduled_grads(which):
    from bnnkit.binarize import functional as F

    x, g = _big(8, scale=0.7), _big(9)
    t, k = torch.tensor(1.3), torch.tensor(0.8)
    kern = K.ede_grad if which == "ede" else K.rbnn_grad
    pure = F.ede_grad if which == "ede" else F.rbnn_grad
    assert K.SCHEDULED_GRADS[pure] is kern
    torch.testing.assert_close(kern(True, x, g, t, k), g * pure(x, t, k), rtol=1e-5, atol=1e-6)
    # hand value at x = 0: EDE k t, RBNN k sqrt(2) t
    z = _padded([0.0])
    want = 0.8 * 1.3 * (1.0 if which == "ede" else math.sqrt(2.0))
    assert kern(True, z, torch.ones(BIG), t, k).flatten()[0].item() == pytest.approx(want)


FUNCTIONS = {
    "identity_ste": lambda x: A.identity_ste_sign(x),
    "clipped_ste": lambda x: A.clipped_ste_sign(x, 1.0),
    "approx": lambda x: A.approx_sign(x),
    "shifted": lambda x: A.shifted_approx_sign(x, torch.linspace(-0.5, 0.5, BIG[1])),
    "std_norm": lambda x: A.std_norm_approx_sign(x, False),
    "std_norm_detached": lambda x: A.std_norm_approx_sign(x, True),
    "ede": lambda x: A.ede_sign(x, 1.5, 1.0),
    "rbnn": lambda x: A.rbnn_sign(x, 1.2, 1.0),
    "swish": lambda x: A.swish_sign(x, 5.0),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_functions_fused_equal_eager(name):
    fn = FUNCTIONS[name]
    out, grads = {}, {}
    for fused in (False, True):
        x = _big(10, scale=0.9).requires_grad_()
        with K.fused_kernels(fused):
            y = fn(x)
        y.backward(_big(11))
        out[fused], grads[fused] = y.detach(), x.grad
    assert torch.equal(out[True], out[False])
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-5, atol=1e-6)


def test_backward_follows_the_forward_choice(monkeypatch):
    calls = []
    real = K.approx_grad

    def spy(fused, *args):
        calls.append(fused)
        return real(fused, *args)

    monkeypatch.setattr(K, "approx_grad", spy)
    x = _big(12).requires_grad_()
    with K.fused_kernels():
        y = A.approx_sign(x)
    y.sum().backward()  # outside the block: still the fused backward
    x2 = _big(12).requires_grad_()
    y2 = A.approx_sign(x2)
    with K.fused_kernels():
        y2.sum().backward()  # forward was eager: so is the backward
    assert calls == [True, False]


def test_recomputed_sign_follows_the_forward_choice(monkeypatch):
    calls = []
    real = K.sign

    def spy(fused, x):
        calls.append(fused)
        return real(fused, x)

    monkeypatch.setattr(K, "sign", spy)
    x = _big(13).requires_grad_()
    w = torch.randn(4, BIG[1], 3, 3, requires_grad=True)
    with K.fused_kernels(), A.sign_recompute_hooks():
        y = torch.nn.functional.conv2d(A.approx_sign(x), w)
    y.sum().backward()
    assert calls == [True, True]  # the forward sign, then its recomputation for the conv
    assert w.grad is not None and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("fused", [False, True])
def test_channels_last_inputs_give_the_same_results(fused):
    """An NHWC (channels_last) activation: the per-sample statistics read it without a copy
    in its own element order; results equal the NCHW ones, and the sign keeps the layout."""
    x, g = _big(14, scale=1.3), _big(15)
    xl, gl = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    assert not xl.is_contiguous()
    out = K.sign(fused, xl)
    assert torch.equal(out, K.sign(fused, x))
    assert out.is_contiguous(memory_format=torch.channels_last)
    sigma, mean = K.sample_std(fused, x)
    sigma_l, mean_l = K.sample_std(fused, xl)
    torch.testing.assert_close(sigma_l, sigma, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean_l, mean, rtol=1e-5, atol=1e-6)
    for detach in (True, False):
        want = K.std_norm_grad(fused, x, g, sigma, mean, detach)
        got = K.std_norm_grad(fused, xl, gl, sigma, mean, detach)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_kernel_that_cannot_be_generated_says_how_to_go_on(monkeypatch):
    """No C++ compiler (here: a backend that fails as inductor does without one): the error
    names the kernel and the switch that avoids it."""
    real_compile = torch.compile

    def no_compiler(gm, example_inputs):
        raise OSError("c++: command not found")

    monkeypatch.setattr(
        torch, "compile", lambda fn, **kw: real_compile(fn, backend=no_compiler, **kw)
    )
    triple = K._kernel(elementwise=True)(lambda x: 3.0 * x)
    with pytest.raises(RuntimeError, match=r"training.fused_kernels=false.*C\+\+ compiler"):
        triple(True, torch.ones(BIG))
    assert torch.equal(triple(False, torch.ones(BIG)), torch.full(BIG, 3.0))
