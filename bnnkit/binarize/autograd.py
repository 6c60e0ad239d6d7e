"""``torch.autograd.Function``s: forward ``sign`` (sign(0) = +1), backward a surrogate.

Each Function saves the smallest tensor its backward needs (nothing, a bool mask, or the
input) and evaluates the surrogate derivative of :mod:`bnnkit.binarize.functional`; the
activation-sized passes run through :mod:`bnnkit.binarize.kernels` (eager, or generated
kernels inside ``fused_kernels()``: chosen in the forward, followed by the backward). The
differentiable functions at the bottom (``clipped_ste_sign`` ...) are the public entry points.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from bnnkit.binarize import functional as F
from bnnkit.binarize import kernels as K


class _IdentitySTESign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return K.sign(K.use_fused(x), x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@functools.lru_cache(maxsize=256)
def clip_bounds(c: float) -> dict[torch.dtype, float]:
    """Per float dtype, the smallest value above ``c``: for ``x`` of that dtype,
    ``|x| < bound`` is exactly ``|x| <= c``. Computed once per ``c`` (outside any graph)."""
    out = {}
    for dtype in FLOAT_DTYPES:
        t = torch.tensor(c, dtype=dtype)
        out[dtype] = float(torch.nextafter(t, torch.tensor(float("inf"), dtype=dtype)))
    return out


class _ClippedSTESign(torch.autograd.Function):
    """Forward sign; backward ``grad * 1[|x| <= c]`` in one fused kernel (``hardtanh_backward``,
    whose open interval is widened to the next representable value so ``|x| = c`` passes).
    Saves ``x`` itself: no mask pass in the forward (the mask costs more time than the
    3 bytes per element it would save; see BENCHMARKS.md)."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return K.sign(K.use_fused(x), x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        b = ctx.bound
        return torch.ops.aten.hardtanh_backward(grad, x.to(grad.dtype), -b, b), None


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        ctx.fused = K.use_fused(x)
        return K.sign(ctx.fused, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return K.approx_grad(ctx.fused, x, grad)  # grad * F.approx_sign_grad(x)


class _ShiftedApproxSign(torch.autograd.Function):
    """Fused ``approx_sign(x + b_c)`` (ReActNet's RSign): forward ``s = x + (b + 0)`` and
    ``sign(s)`` in two passes (no ``+0`` pass: ``b + 0`` is never -0, so ``s`` is never -0);
    saves ``s`` only. Backward ``gs = g * max(0, 2 - 2|s|)``, ``dx = gs``, ``db_c = sum gs``
    over every dim but 1 (one reduction; no separate broadcast-add node)."""

    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor) -> Tensor:
        ctx.fused = K.use_fused(x)
        s, out = K.shifted_sign(ctx.fused, x, bias)
        ctx.save_for_backward(s)
        ctx.bias_dtype = bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        (s,) = ctx.saved_tensors
        gs, gb = K.shifted_approx_grad(ctx.fused, s, grad)
        return gs, gb.to(ctx.bias_dtype)


class _ScheduledSign(torch.autograd.Function):
    """sign(x) forward; backward ``grad * surrogate(x, t, k)`` (EDE, RBNN: 0-d t, k tensors)."""

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, k: Tensor, surrogate: Any) -> Tensor:
        ctx.save_for_backward(x, t, k)
        ctx.surrogate = surrogate
        ctx.fused = K.use_fused(x) and surrogate in K.SCHEDULED_GRADS
        return K.sign(ctx.fused, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        x, t, k = ctx.saved_tensors
        if ctx.fused:
            return K.SCHEDULED_GRADS[ctx.surrogate](True, x, grad, t, k), None, None, None
        return grad * ctx.surrogate(x, t, k), None, None, None


class _SwishSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, beta: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return K.sign(K.use_fused(x), x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * F.swish_sign_grad(x, ctx.beta), None


class _StdNormApproxSign(torch.autograd.Function):
    """Fused ``approx_sign(x / std_n(x))`` with the per-sample std of ReCU / OvSW inputs.

    Forward: ``sign(x)`` (the positive std does not change the sign) and the per-sample
    ``sigma = sqrt(var_unbiased + 1e-5)``; saves ``x`` and ``sigma`` only. Backward:
    ``gh = g * max(0, 2 - 2|x/sigma|)``; ``dx = gh / sigma`` and, when the std is not detached
    (ReCU), the term through the variance
    ``- (x - mean) * sum(gh * x) / ((n - 1) sigma^3)``. Equal to autograd through the unfused
    expression (tested), without its four full-size temporaries.
    """

    @staticmethod
    def forward(ctx, x: Tensor, detach_std: bool) -> Tensor:
        ctx.fused = K.use_fused(x)
        sigma, mean = K.sample_std(ctx.fused, x)
        ctx.save_for_backward(x, sigma, mean)
        ctx.detach_std = detach_std
        return K.sign(ctx.fused, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        x, sigma, mean = ctx.saved_tensors
        return K.std_norm_grad(ctx.fused, x, grad, sigma, mean, ctx.detach_std), None


# Functions whose single saved input x satisfies output == F.sign(x): the ±1 output can be
# recomputed from x in the backward instead of being stored a second time (see
# :func:`sign_recompute_hooks`).
_SIGN_OF_SAVED_INPUT = (
    _ClippedSTESign,
    _ApproxSign,
    _ShiftedApproxSign,
    _ScheduledSign,
    _SwishSign,
    _StdNormApproxSign,
)


class _Recompute:
    __slots__ = ("fused", "source")

    def __init__(self, source: Tensor) -> None:
        self.source = source
        self.fused = K.use_fused(source)  # chosen in the forward, as the Functions do


def _pack_sign(t: Tensor) -> Any:
    fn = t.grad_fn
    if fn is not None and isinstance(fn, torch.autograd.function.BackwardCFunction):
        cls = getattr(fn, "_forward_cls", None)
        if cls in _SIGN_OF_SAVED_INPUT:
            source = fn.saved_tensors[0]
            if source.shape == t.shape and source.dtype == t.dtype:
                return _Recompute(source)
    return t


def _unpack_sign(packed: Any) -> Tensor:
    return K.sign(packed.fused, packed.source) if isinstance(packed, _Recompute) else packed


def sign_recompute_hooks() -> Any:
    """``saved_tensors_hooks`` under which an op that saves a binarizer's ±1 output keeps a
    reference to the binarizer's saved input instead, and recomputes the sign in the backward.

    A binary convolution then stores no copy of its ±1 input: the training memory of a
    binary layer equals the float layer's (the binarizer keeps the pre-sign input, as the float
    convolution keeps its input). Cost: one sign per binary layer in the backward.
    """
    return torch.autograd.graph.saved_tensors_hooks(_pack_sign, _unpack_sign)


def identity_ste_sign(x: Tensor) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x)`; backward :math:`g` (identity STE)."""
    return _IdentitySTESign.apply(x)


def clipped_ste_sign(x: Tensor, clip_value: float = 1.0) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x)`; backward :math:`g \cdot 1_{|x| \le c}`."""
    return _ClippedSTESign.apply(x, clip_bounds(float(clip_value))[x.dtype])


def std_norm_approx_sign(x: Tensor, detach_std: bool = False) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x)`; backward ApproxSign of :math:`\hat x = x / \sigma_n`
    through the per-sample :math:`\sigma_n = \sqrt{\mathrm{var}_{C,H,W}(x) + 10^{-5}}`
    (unbiased; not differentiated when ``detach_std``). ReCU / OvSW inputs in training."""
    return _StdNormApproxSign.apply(x, bool(detach_std))


def approx_sign(x: Tensor) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x)`; backward :math:`g \cdot \max(0, 2 - 2|x|)` (Bi-Real)."""
    return _ApproxSign.apply(x)


def shifted_approx_sign(x: Tensor, bias: Tensor) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x + b_c)`; backward ApproxSign at :math:`x + b_c` for both
    :math:`x` and the per-channel shift :math:`b` (dim 1). ReActNet's RSign, fused."""
    if bias.ndim != 1 or x.ndim < 2 or x.shape[1] != bias.numel():
        raise ValueError(
            f"shifted_approx_sign: bias of shape {tuple(bias.shape)} does not match dim 1 of "
            f"input {tuple(x.shape)}; pass one shift per channel"
        )
    return _ShiftedApproxSign.apply(x, bias)


def ede_sign(x: Tensor, t: Tensor | float, k: Tensor | float) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x)`; backward :math:`g \cdot k t (1 - \tanh^2(t x))` (IR-Net)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    k = torch.as_tensor(k, dtype=x.dtype, device=x.device)
    return _ScheduledSign.apply(x, t, k, F.ede_grad)


def rbnn_sign(x: Tensor, t: Tensor | float, k: Tensor | float) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x)`; backward :math:`g \cdot k \max(0, \sqrt2 t - t^2|x|)` (RBNN)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    k = torch.as_tensor(k, dtype=x.dtype, device=x.device)
    return _ScheduledSign.apply(x, t, k, F.rbnn_grad)


def swish_sign(x: Tensor, beta: float = 5.0) -> Tensor:
    r"""Forward :math:`\mathrm{sign}(x)`; backward :math:`g \cdot SS'_\beta(x)` (BNN+)."""
    return _SwishSign.apply(x, float(beta))


def magnitude_aware_sign(x: Tensor, clip_value: float = 1.0) -> Tensor:
    r"""Magnitude-aware sign (Bi-Real Net §3.3, larq's ``magnitude_aware_sign``).

    Forward :math:`\alpha_c\,\mathrm{sign}(x)` with :math:`\alpha_c = \lVert x_c \rVert_1 / n`
    per output channel (dim 0), detached; backward :math:`\alpha_c \cdot 1_{|x| \le c} \cdot g`.
    """
    return F.channel_mean_abs(x).detach() * clipped_ste_sign(x, clip_value)
