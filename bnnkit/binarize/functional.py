"""Pure math of binarization: the sign function and the surrogate gradients.

Every function here is a plain elementwise tensor function with no autograd magic: the
forward ``sign`` and, for each estimator, its surrogate derivative ``d/dx``. The autograd
``Function``s in :mod:`bnnkit.binarize.autograd` call these in their backward, so the math
lives in exactly one place and is tested directly.

Convention: ``sign(0) = +1`` (deployment needs exactly two values). The official code of
every paper this library implements uses ``torch.sign``, which gives 0 at exactly 0; for a
float latent weight or activation that is hit with probability ~0, so results do not change.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sign(x: Tensor) -> Tensor:
    r"""Two-valued sign, :math:`\mathrm{sign}(x) = +1` if :math:`x \ge 0` else :math:`-1`.

    Args:
        x: any floating tensor.

    Returns:
        A tensor of the same shape and dtype holding only ``+1`` and ``-1`` (NaN maps to ±1
        by its sign bit).

    Implementation: ``copysign(1, x + 0)``; adding +0 turns -0.0 into +0.0 (IEEE 754), so
    both zeros give +1. Two cheap elementwise passes: ``torch.where(x >= 0, 1, -1)`` costs
    about 6x more on CPU (a bool temporary and a slow select kernel).
    """
    one = torch.ones((), dtype=x.dtype, device=x.device)
    out = x + 0.0
    return torch.copysign(one, out, out=out)


def square_wave(x: Tensor, omega: float) -> Tensor:
    r"""BiPer's periodic binarization, :math:`\mathrm{sign}(\sin(\omega x))` (sign(0) = +1).

    +1 on :math:`[2k\pi, (2k+1)\pi)/\omega`, -1 on :math:`[(2k+1)\pi, (2k+2)\pi)/\omega`
    (up to float rounding of the sine at the switching points): the period in ``x`` is
    :math:`2\pi/\omega`.
    """
    return sign(torch.sin(omega * x))


def identity_ste_grad(x: Tensor) -> Tensor:
    r"""Identity straight-through estimator: :math:`\partial\,\mathrm{sign}(x)/\partial x := 1`.

    Used for weights by ReCU and OvSW (no clipping). Hinton's lecture / Bengio et al. 2013.
    """
    return torch.ones_like(x)


def clipped_ste_grad(x: Tensor, clip_value: float = 1.0) -> Tensor:
    r"""Clipped STE: :math:`\partial\,\mathrm{sign}(x)/\partial x := 1_{|x| \le c}`.

    The gradient of ``hardtanh`` / ``clamp(x, -c, c)`` (boundary included, as ``torch.clamp``).
    Hubara et al., "Binarized Neural Networks", NeurIPS 2016; XNOR-Net; Bi-Real and ReActNet
    weights.
    """
    return (x.abs() <= clip_value).to(x.dtype)


def approx_sign_grad(x: Tensor) -> Tensor:
    r"""ApproxSign (Bi-Real Net): :math:`\partial F/\partial x = \max(0,\ 2 - 2|x|)`.

    :math:`F(x) = -1` for :math:`x < -1`, :math:`2x + x^2` on :math:`[-1, 0)`,
    :math:`2x - x^2` on :math:`[0, 1)`, :math:`+1` for :math:`x \ge 1`.
    Liu et al., "Bi-Real Net", ECCV 2018. Activation estimator of Bi-Real, ReActNet, ReCU,
    ReBNN and OvSW.
    """
    return (2.0 - 2.0 * x.abs()).clamp_min(0.0)


def ede_grad(x: Tensor, t: Tensor | float, k: Tensor | float) -> Tensor:
    r"""IR-Net Error Decay Estimator: :math:`k\,t\,(1 - \tanh^2(t x))`.

    The derivative of :math:`k \tanh(t x)`; ``t`` grows during training (see
    :func:`bnnkit.methods.irnet.ede_schedule`) so the estimator moves from identity-like to
    sign-like. Qin et al., "Forward and Backward Information Retention", CVPR 2020.
    """
    return k * t * (1.0 - torch.tanh(t * x).square())


def rbnn_grad(x: Tensor, t: Tensor | float, k: Tensor | float) -> Tensor:
    r"""RBNN's training-aware surrogate: :math:`k \max(0, \sqrt{2}\,t - t^2 |x|)`.

    A triangle of height :math:`k\sqrt{2}\,t` on :math:`|x| < \sqrt{2}/t`, the derivative of
    :math:`k(\sqrt{2}\,t x - \mathrm{sign}(x) t^2 x^2 / 2)` there (which reaches :math:`\pm k`
    at the boundary). Lin et al., "Rotated Binary Neural Network", NeurIPS 2020.
    """
    return k * (math.sqrt(2.0) * t - t * t * x.abs()).clamp_min(0.0)


def swish_sign_grad(x: Tensor, beta: float = 5.0) -> Tensor:
    r"""SwishSign (BNN+): derivative of :math:`SS_\beta(x) = 2\sigma(\beta x)[1 + \beta x(1 - \sigma(\beta x))] - 1`.

    .. math:: \frac{\partial SS_\beta}{\partial x} = \frac{\beta\,(2 - \beta x \tanh(\beta x / 2))}{1 + \cosh(\beta x)}

    Darabi et al., "BNN+: Improved Binary Network Training", 2018 (as in larq's ``swish_sign``).
    """
    bx = beta * x
    return beta * (2.0 - bx * torch.tanh(bx / 2.0)) / (1.0 + torch.cosh(bx))


def channel_mean_abs(w: Tensor) -> Tensor:
    r"""Per-output-channel :math:`\alpha_c = \lVert W_c \rVert_1 / n` (dim 0 = channel), keepdim.

    Returns shape ``(C, 1, ..., 1)`` broadcastable to ``w``. For ``w.ndim < 2`` it returns
    :math:`|w|` itself (each entry is its own channel).
    """
    if w.ndim < 2:
        return w.abs()
    return w.abs().mean(dim=tuple(range(1, w.ndim)), keepdim=True)


def standardize(w: Tensor, *, eps: float = 0.0, unbiased: bool = True) -> Tensor:
    r"""Per-output-channel standardisation :math:`(w - \mu_c) / \sqrt{\sigma_c^2 + \epsilon}`.

    Differentiable (gradients flow through mean and variance). ``eps = 0`` with the unbiased
    std is IR-Net's Libra-PB; ``eps = 1e-5`` is ReCU's and OvSW's.
    """
    dims = tuple(range(1, w.ndim))
    centred = w - w.mean(dim=dims, keepdim=True)
    var = centred.var(dim=dims, keepdim=True, unbiased=unbiased)
    return centred / torch.sqrt(var + eps) if eps else centred / torch.sqrt(var)
