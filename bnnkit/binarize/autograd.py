"""``torch.autograd.Function``s: forward ``sign`` (sign(0) = +1), backward a surrogate.

Each Function saves the smallest tensor its backward needs (nothing, a bool mask, or the
input) and evaluates the surrogate derivative from :mod:`bnnkit.binarize.functional`. The
differentiable functions at the bottom (``clipped_ste_sign`` ...) are the public entry points.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnnkit.binarize import functional as F


class _IdentitySTESign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return F.sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class _ClippedSTESign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, clip_value: float) -> Tensor:
        ctx.save_for_backward(x.abs() <= clip_value)  # bool mask: 1 byte per element
        return F.sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return F.sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * F.approx_sign_grad(x)


class _EDESign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, k: Tensor) -> Tensor:
        ctx.save_for_backward(x, t, k)
        return F.sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        x, t, k = ctx.saved_tensors
        return grad * F.ede_grad(x, t, k), None, None


class _SwishSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, beta: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return F.sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * F.swish_sign_grad(x, ctx.beta), None


def identity_ste_sign(x: Tensor) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x)`; backward :math:`g` (identity STE)."""
    return _IdentitySTESign.apply(x)


def clipped_ste_sign(x: Tensor, clip_value: float = 1.0) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x)`; backward :math:`g \cdot 1_{|x| \le c}`."""
    return _ClippedSTESign.apply(x, float(clip_value))


def approx_sign(x: Tensor) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x)`; backward :math:`g \cdot \max(0, 2 - 2|x|)` (Bi-Real)."""
    return _ApproxSign.apply(x)


def ede_sign(x: Tensor, t: Tensor | float, k: Tensor | float) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x)`; backward :math:`g \cdot k t (1 - \tanh^2(t x))` (IR-Net)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    k = torch.as_tensor(k, dtype=x.dtype, device=x.device)
    return _EDESign.apply(x, t, k)


def swish_sign(x: Tensor, beta: float = 5.0) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x)`; backward :math:`g \cdot SS'_\beta(x)` (BNN+)."""
    return _SwishSign.apply(x, float(beta))


def magnitude_aware_sign(x: Tensor, clip_value: float = 1.0) -> Tensor:
    r"""Magnitude-aware sign (Bi-Real Net §3.3, larq's ``magnitude_aware_sign``).

    Forward :math:`\alpha_c\,\mathrm{sign}(x)` with :math:`\alpha_c = \lVert x_c \rVert_1 / n`
    per output channel (dim 0), detached; backward :math:`\alpha_c \cdot 1_{|x| \le c} \cdot g`.
    """
    return F.channel_mean_abs(x).detach() * clipped_ste_sign(x, clip_value)
