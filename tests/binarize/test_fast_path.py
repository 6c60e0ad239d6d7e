"""The fused fast-path Functions equal the plain autograd expressions they replace."""

from __future__ import annotations

import pytest
import torch

from bnnkit.binarize import autograd as A
from bnnkit.binarize import functional as F
from bnnkit.binarize.binarizers import ClippedSTESign, StdNormApproxSign


def test_sign_of_both_zeros_is_plus_one_and_values_are_two():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3.0, -2.0])
    assert F.sign(x).tolist() == [1.0, 1.0, 1.0, -1.0, 1.0, -1.0]
    assert F.sign(x).dtype == x.dtype
    y = torch.tensor([0.0, -0.0, 3.0, -2.0, -0.001])
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert F.sign(y.to(dtype)).tolist() == [1.0, 1.0, 1.0, -1.0, -1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("c", [1.0, 0.7, 1.3])
def test_clipped_ste_passes_the_boundary_and_nothing_beyond(dtype, c):
    cd = torch.tensor(c, dtype=dtype)
    above = torch.nextafter(cd, torch.tensor(float("inf"), dtype=dtype))
    below = torch.nextafter(cd, torch.tensor(0.0, dtype=dtype))
    x = torch.stack([cd, -cd, above, -above, below, torch.tensor(0.0, dtype=dtype)])
    x.requires_grad_(True)
    ClippedSTESign(c)(x).backward(torch.full_like(x, 3.0))
    assert x.grad.tolist() == [3.0, 3.0, 0.0, 0.0, 3.0, 3.0]
    x.grad = None
    A.clipped_ste_sign(x, c).backward(torch.full_like(x, 3.0))
    assert x.grad.tolist() == [3.0, 3.0, 0.0, 0.0, 3.0, 3.0]


def test_approx_sign_backward_equals_the_surrogate_formula():
    x = torch.linspace(-1.5, 1.5, 31, dtype=torch.float64, requires_grad=True)
    g = torch.randn(31, dtype=torch.float64)
    A.approx_sign(x).backward(g)
    assert torch.allclose(x.grad, g * (2 - 2 * x.detach().abs()).clamp_min(0))


@pytest.mark.parametrize("detach", [False, True])
def test_std_norm_approx_sign_equals_autograd_through_the_unfused_expression(detach):
    torch.manual_seed(1)
    x = (torch.randn(5, 4, 6, 6, dtype=torch.float64) * 2 + 0.7).requires_grad_()
    g = torch.randn_like(x)
    out = A.std_norm_approx_sign(x, detach)
    out.backward(g)
    fused = x.grad.clone()
    x.grad = None
    std = torch.sqrt(x.flatten(1).var(dim=1, unbiased=True) + 1e-5).view(-1, 1, 1, 1)
    ref = A.approx_sign(x / (std.detach() if detach else std))
    ref.backward(g)
    assert torch.equal(out, ref)
    assert torch.allclose(fused, x.grad, atol=1e-12)


def test_std_norm_module_uses_the_normalised_surrogate_only_in_training():
    m = StdNormApproxSign(detach_std=False, num_channels=4)
    x = (torch.randn(2, 4, 3, 3) * 3).requires_grad_()
    m.eval()
    m(x).sum().backward()
    assert torch.allclose(x.grad, (2 - 2 * x.detach().abs()).clamp_min(0))


def test_shifted_approx_sign_forward_and_gradients_by_hand():
    # x + b = [[-0.75, 0.25], [1.5, -0.0 + 0.0]] per channel: channel 0 shift 0.25, channel 1 0.0
    x = torch.tensor([[[-1.0, 0.0]], [[1.5, -0.0]]]).view(1, 2, 2).requires_grad_()
    b = torch.tensor([0.25, 0.0], requires_grad=True)
    y = A.shifted_approx_sign(x, b)
    # s = [[-0.75, 0.25], [1.5, +0]]: sign -1, +1, +1, +1 (x = -0 with b = +0 gives +1)
    assert y.tolist() == [[[-1.0, 1.0], [1.0, 1.0]]]
    g = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    y.backward(g)
    # d/ds = max(0, 2 - 2|s|): 0.5, 1.5, 0, 2
    assert x.grad.tolist() == [[[0.5, 3.0], [0.0, 8.0]]]
    assert b.grad.tolist() == [3.5, 8.0]


def test_shifted_approx_sign_rejects_a_bias_that_does_not_match_the_channels():
    with pytest.raises(ValueError, match="one shift per channel"):
        A.shifted_approx_sign(torch.zeros(2, 3, 4, 4), torch.zeros(4))
