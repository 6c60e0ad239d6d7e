"""The activation-sized passes of the sign Functions, run eagerly or as generated kernels.

Each kernel below is a pure function whose body ``torch.compile`` (inductor) turns, inside
:func:`fused_kernels`, into one generated loop (C++ with AVX-512 on a CPU, Triton on a GPU)
that reads each input once and writes each output once; outside, eager PyTorch runs the body
op by op (one pass over the tensor per op) or, where one is given, an in-place form of the
same math with the fewest temporaries (the path bnnkit always ran). Only tensors of at least
:data:`MIN_FUSED_NUMEL` elements (activations; weights are small) take the generated path,
and never while the caller is itself being compiled (``training.compile`` fuses everything).

What the generated path changes, per binary layer and step (see BENCHMARKS.md):

- the sign, ``copysign(1, x + 0)``: 2 passes -> 1 (forward, and its recomputation in the
  backward);
- the ApproxSign backward ``g * max(0, 2 - 2|x|)``: 4 passes -> 1;
- ReActNet's shift ``s = x + b`` and ``sign(s)``: one loop with two outputs;
- the per-sample std of ReCU / OvSW inputs: the two moments in one pass, the backward in two;
- EDE / RBNN surrogates: one pass.

The results equal the eager ones up to float rounding (a fused loop may contract ``a*b + c``
into one FMA): the sign is bit-identical, sign(-0) = +1 included; the gradients agree to a few
ulps (tested). The choice is made in the forward and stored on the autograd context, so the
backward runs the same path on any autograd thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from bnnkit.binarize import functional as F

MIN_FUSED_NUMEL = 1 << 15
"""Tensors smaller than this (a 64x64x3x3 weight has 36,864 elements) run eagerly: a generated
kernel's call costs ~0.1-0.2 ms here (dynamo's guard check and the compiled region's entry),
more than an eager pass over a tensor of a few tens of thousands of elements."""

_FUSED: contextvars.ContextVar[bool] = contextvars.ContextVar("bnnkit_fused", default=False)


@contextlib.contextmanager
def fused_kernels(enabled: bool = True) -> Iterator[None]:
    """Within the block, the sign Functions' forwards (and their backwards, which follow the
    forward's choice) use the generated kernels; ``enabled=False`` forces the eager ones."""
    token = _FUSED.set(bool(enabled))
    try:
        yield
    finally:
        _FUSED.reset(token)


def use_fused(x: Tensor) -> bool:
    """Whether a forward on ``x`` takes the generated path: inside :func:`fused_kernels`, for a
    tensor of at least :data:`MIN_FUSED_NUMEL` elements, outside a ``torch.compile`` trace."""
    if torch.compiler.is_compiling():  # first: a ContextVar is not traceable
        return False
    return _FUSED.get() and x.numel() >= MIN_FUSED_NUMEL


def _channel_view(b: Tensor, x: Tensor) -> Tensor:
    return b.view(1, -1, *([1] * (x.ndim - 2)))


def _sample_view(v: Tensor, x: Tensor) -> Tensor:
    return v.view(-1, *([1] * (x.ndim - 1)))


def _kernel(
    eager: Callable[..., Any] | None = None, *, elementwise: bool = False
) -> Callable[..., Any]:
    """Decorator: ``fn(fused, *args)`` runs the decorated body's ``torch.compile``d version
    when ``fused``, else ``eager`` (an in-place, fewest-temporaries eager form of the same
    math) or, without one, the body itself.

    The compiled version is built on first use, with symbolic sizes (``dynamic=True``: one
    kernel per dtype for every shape) and with autocast off around it (the kernels do no
    matmul; it keeps one compiled variant for both precisions' autocast states). An
    ``elementwise`` body gets its same-shaped tensor arguments flattened, so one 1-D kernel
    serves convolutions and linear layers alike."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        compiled: list[Callable[..., Any]] = []
        run_eager = eager or fn

        @functools.wraps(fn)
        def call(fused: bool, *args: Any) -> Any:
            if not fused:
                return run_eager(*args)
            if not compiled:
                compiled.append(torch.compile(fn, dynamic=True))
            x = args[0]
            try:
                with torch.autocast(x.device.type, enabled=False):
                    if not (elementwise and x.is_contiguous()):
                        return compiled[0](*args)
                    flat = [_flat(a, x) for a in args]
                    return compiled[0](*flat).view(x.shape)
            except torch._dynamo.exc.BackendCompilerFailed as e:  # no C++ compiler, no Triton
                raise RuntimeError(
                    f"bnnkit could not generate its {fn.__name__!r} kernel on {x.device.type} "
                    f"({type(e.inner_exception).__name__}: {str(e.inner_exception)[:200]}); "
                    "set training.fused_kernels=false (the eager kernels compute the same), or "
                    "install what torch.compile needs (a C++ compiler on the CPU, Triton on CUDA)"
                ) from e

        call.eager = run_eager  # type: ignore[attr-defined]
        call.body = fn  # type: ignore[attr-defined]
        return call

    return wrap


def _rows(t: Tensor) -> Tensor:
    """``t`` as ``(N, -1)``, a view for an NCHW- or NHWC-contiguous tensor (``flatten(1)`` would
    copy a channels_last one); a row's element order is the layout's, so for order-free
    reductions only (sums, dot products of two tensors of one layout)."""
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).flatten(1)
    return t.flatten(1)


def _flat(a: Any, like: Tensor) -> Any:
    return a.reshape(-1) if isinstance(a, Tensor) and a.shape == like.shape else a


def _approx_grad_eager(x: Tensor, grad: Tensor) -> Tensor:
    # four passes and one new tensor: t = min(|x|, 1), then 2 (grad - grad t)
    t = x.abs().to(grad.dtype)
    t.clamp_max_(1.0)
    return torch.addcmul(grad, grad, t, value=-1.0, out=t).mul_(2.0)


def _sample_std_eager(x: Tensor) -> tuple[Tensor, Tensor]:
    # two reductions, no temporaries of x's size kept; 8x faster than var_mean on CPU. A bf16
    # input's sum of squares is accumulated in fp32 by vector_norm (vecdot would round it to bf16)
    flat = _rows(x)
    n = flat.shape[1]
    acc = _stat_dtype(x)
    total = flat.sum(dim=1, dtype=acc)
    mean = total / n
    if flat.dtype == acc:
        sq = torch.linalg.vecdot(flat, flat)
    else:
        sq = torch.linalg.vector_norm(flat, dim=1, dtype=acc).square()
    var = ((sq - total * mean) / max(n - 1, 1)).clamp_min(0.0)
    return torch.sqrt(var + 1e-5), mean


def _stat_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _std_norm_grad_eager(
    x: Tensor, grad: Tensor, sigma: Tensor, mean: Tensor, detach_std: bool
) -> Tensor:
    s = _sample_view(sigma, x).to(grad.dtype)
    t = x.abs().to(grad.dtype).mul_(1.0 / s).clamp_max_(1.0)
    v = torch.addcmul(grad, grad, t, value=-1.0, out=t)
    k = 2.0 / s
    if detach_std:
        return v.mul_(k)
    n = x[0].numel()
    # u + c mean in one pass, - c x in another
    dot = torch.linalg.vecdot(_rows(v), _rows(x.to(v.dtype))).view(s.shape) * k  # v: x's layout
    c = dot / ((n - 1) * s * s)
    u = torch.addcmul(c * _sample_view(mean, x).to(c.dtype), v, k)
    return u.addcmul_(x, c, value=-1.0)


@_kernel(elementwise=True)
def sign(x: Tensor) -> Tensor:
    """:func:`bnnkit.binarize.functional.sign` (``copysign(1, x + 0)``, sign(-0) = +1)."""
    return F.sign(x)


@_kernel(_approx_grad_eager, elementwise=True)
def approx_grad(x: Tensor, grad: Tensor) -> Tensor:
    """ApproxSign's backward ``grad * max(0, 2 - 2|x|)``."""
    t = x.abs().to(grad.dtype).clamp_max(1.0)
    return 2.0 * (grad - grad * t)


@_kernel()
def shifted_sign(x: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """ReActNet's RSign forward: ``s = x + b_c`` (b + 0 is never -0) and ``sign(s)``, in x's
    dtype (under bf16 autocast a bf16 input stays bf16: rounding never changes a sign)."""
    s = x + _channel_view((bias + 0.0).to(x.dtype), x)
    return s, torch.copysign(torch.ones((), dtype=s.dtype, device=s.device), s)


def shifted_approx_grad(fused: bool, s: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """RSign's backward: ``gs = grad * max(0, 2 - 2|s|)`` and its sum over all dims but 1 (the
    reduction stays eager: generating it into the same loop, across the batch and spatial dims
    with symbolic sizes, ran 1.4-1.9x slower than the eager pair here)."""
    gs = approx_grad(fused, s, grad)
    return gs, gs.sum(dim=[0, *range(2, gs.ndim)])


@_kernel(_sample_std_eager)
def sample_std(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``sigma = sqrt(var_unbiased + 1e-5)`` and mean over all dims but 0, from the
    one-pass moments (sum and sum of squares; relative error ~1e-7 (1 + mean^2 / var)),
    accumulated and returned in fp32 at least (a bf16 input's statistics are fp32)."""
    flat = _rows(x).to(_stat_dtype(x))
    n = flat.shape[1]
    total = flat.sum(dim=1)
    mean = total / n
    var = (((flat * flat).sum(dim=1) - total * mean) / max(n - 1, 1)).clamp_min(0.0)
    return torch.sqrt(var + 1e-5), mean


@_kernel(_std_norm_grad_eager)
def std_norm_grad(x: Tensor, grad: Tensor, sigma: Tensor, mean: Tensor, detach_std: bool) -> Tensor:
    """The backward of ``approx_sign(x / sigma_n)`` (see ``_StdNormApproxSign``): with
    ``v = grad (1 - min(|x| / sigma, 1))`` and ``k = 2 / sigma``, ``dx = k v`` when the std is
    detached, else ``k v + c (mean - x)`` with ``c = k sum(v x) / ((n - 1) sigma^2)``."""
    s = _sample_view(sigma, x).to(grad.dtype)
    t = (x.abs().to(grad.dtype) / s).clamp_max(1.0)
    v = grad - grad * t
    k = 2.0 / s
    if detach_std:
        return v * k
    n = x[0].numel()
    dot = _rows(v * x.to(v.dtype)).sum(dim=1)
    c = _sample_view(dot, x) * k / ((n - 1) * s * s)
    return v * k + c * (_sample_view(mean, x).to(c.dtype) - x.to(c.dtype))


@_kernel(elementwise=True)
def ede_grad(x: Tensor, grad: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """``grad * k t (1 - tanh^2(t x))`` (:func:`bnnkit.binarize.functional.ede_grad`)."""
    return grad * F.ede_grad(x, t, k)


@_kernel(elementwise=True)
def rbnn_grad(x: Tensor, grad: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """``grad * k max(0, sqrt(2) t - t^2 |x|)`` (:func:`bnnkit.binarize.functional.rbnn_grad`)."""
    return grad * F.rbnn_grad(x, t, k)


SCHEDULED_GRADS = {F.ede_grad: ede_grad, F.rbnn_grad: rbnn_grad}
"""The generated kernel of each scheduled surrogate (``_ScheduledSign``), keyed by the pure
function."""
