"""Packed XNOR-popcount kernels for CPUs (x86-64 and ARM64), compiled by numba.

numba ships wheels (no compiler needed at install time) and compiles these loops for the
host CPU on first use (a few seconds, cached on disk where the package is writable). The
popcount is LLVM's ``ctpop`` intrinsic (one ``popcnt`` instruction on x86-64 with POPCNT,
``cnt`` on ARM64). Work is split over ``numba.prange`` rows; the thread count follows
``torch.get_num_threads()`` (capped at numba's pool), so packed and float torch layers
compare at the same threads.

Same results as :mod:`bnnkit.export.kernels.reference` (tested), same layouts
(:mod:`bnnkit.export.pack`); the only difference is that padded kernel positions are
corrected per output pixel on the fly.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numba
import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import intrinsic
from torch import Tensor

from bnnkit.export.kernels.reference import output_size, weight_position_sums

# LLVM's x86 cost model prefers 256-bit vectors on AVX-512 CPUs (to avoid clock throttling on
# old Xeons); for these popcount loops 512-bit ``vpopcntq`` is 25-30% faster on this machine
# (BENCHMARKS.md). The string attribute applies to the function being compiled only and is
# ignored by other targets (ARM64). llvmlite's attribute set accepts only its known names, so
# the attribute is added past that check; should a future llvmlite refuse it, the kernels
# simply compile with LLVM's default width.
_WIDE_VECTORS = '"prefer-vector-width"="512"'


def _prefer_wide_vectors(function) -> None:
    with contextlib.suppress(Exception):  # an optimisation hint, never worth a failure
        set.add(function.attributes, _WIDE_VECTORS)


@intrinsic
def _popcount(typingctx, x):
    """``popcount(x)`` of a uint64 as int64 (LLVM ``ctpop``); marks the kernel it is inlined in
    as preferring 512-bit vectors."""
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):
        _prefer_wide_vectors(builder.function)
        return builder.ctpop(args[0])

    return sig, codegen


@njit(parallel=True, cache=True)
def _conv(xb, wt, wsum, c_in, kh, kw, sh, sw, ph, pw, scale, bias, out):
    """``out[n, oh, ow, o] = scale[o] * dot + bias[o]`` (``out`` float32) or ``dot`` (int32,
    when ``scale`` is empty). ``wt``: weight words transposed to ``(kH * kW * words, O)`` so
    the innermost loop runs over output channels (vectorised popcount where the CPU has one)."""
    n_img, h, w, words = xb.shape
    n_out = wt.shape[1]
    oh_n, ow_n = out.shape[1], out.shape[2]
    k_words = kh * kw * words
    total = kh * kw * c_in
    affine = scale.shape[0] > 0
    for r in prange(n_img * oh_n):
        n, oh = r // oh_n, r % oh_n
        win = np.empty(k_words, np.uint64)
        acc = np.empty(n_out, np.int64)
        h0 = oh * sh - ph
        for ow in range(ow_n):
            w0 = ow * sw - pw
            for o in range(n_out):
                acc[o] = 0
            for i in range(kh):
                for j in range(kw):
                    ih, iw = h0 + i, w0 + j
                    base = (i * kw + j) * words
                    if 0 <= ih < h and 0 <= iw < w:
                        for c in range(words):
                            win[base + c] = xb[n, ih, iw, c]
                    else:  # zero padding: +1 words here, then remove what they added
                        for c in range(words):
                            win[base + c] = 0
                        p = i * kw + j
                        for o in range(n_out):
                            acc[o] += wsum[p, o]
            # three words per pass over the accumulators (a third of their loads / stores)
            k3 = k_words - k_words % 3
            for k in range(0, k3, 3):
                x0, x1, x2 = win[k], win[k + 1], win[k + 2]
                for o in range(n_out):
                    acc[o] += 2 * (
                        _popcount(x0 ^ wt[k, o])
                        + _popcount(x1 ^ wt[k + 1, o])
                        + _popcount(x2 ^ wt[k + 2, o])
                    )
            for k in range(k3, k_words):
                xw = win[k]
                for o in range(n_out):
                    acc[o] += 2 * _popcount(xw ^ wt[k, o])
            for o in range(n_out):
                d = total - acc[o]
                if affine:
                    out[n, oh, ow, o] = scale[o] * d + bias[o]
                else:
                    out[n, oh, ow, o] = d


@njit(parallel=True, cache=True)
def _linear(xb, wb, c_in, scale, bias, out):
    n_img, words = xb.shape
    n_out = wb.shape[0]
    affine = scale.shape[0] > 0
    for r in prange(n_img * n_out):
        n, o = r // n_out, r % n_out
        acc = 0
        for k in range(words):
            acc += _popcount(xb[n, k] ^ wb[o, k])
        d = c_in - 2 * acc
        if affine:
            out[n, o] = scale[o] * d + bias[o]
        else:
            out[n, o] = d


@njit(parallel=True, cache=True)
def _pack_nchw(x, shift, out):
    """Sign bits of ``x[n, c, h, w] + shift[c]`` packed along ``c`` into ``out[n, h, w, :]``:
    one word of a row at a time, built in a row buffer with branch-free ORs (the reads run
    along ``w``, contiguous)."""
    n_img, c_in, h, w = x.shape
    words = out.shape[3]
    has_shift = shift.shape[0] > 0
    for r in prange(n_img * h):
        n, i = r // h, r % h
        row = np.empty(w, np.uint64)
        for k in range(words):
            for j in range(w):
                row[j] = 0
            lo = k * 64
            for c in range(lo, min(c_in, lo + 64)):
                s = shift[c] if has_shift else np.float32(0.0)
                bit = np.uint64(c - lo)
                for j in range(w):
                    row[j] |= np.uint64(x[n, c, i, j] + s < 0) << bit
            for j in range(w):
                out[n, i, j, k] = row[j]


@njit(parallel=True, cache=True)
def _pack_nhwc(x, shift, out):
    """The same for a channels-last input ``x[n, h, w, c]`` (what a packed layer outputs)."""
    n_img, h, w, c_in = x.shape
    words = out.shape[3]
    has_shift = shift.shape[0] > 0
    for r in prange(n_img * h):
        n, i = r // h, r % h
        for j in range(w):
            for k in range(words):
                word = np.uint64(0)
                lo = k * 64
                for c in range(lo, min(c_in, lo + 64)):
                    s = shift[c] if has_shift else np.float32(0.0)
                    word |= np.uint64(x[n, i, j, c] + s < 0) << np.uint64(c - lo)
                out[n, i, j, k] = word


def _set_threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _u64(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy().view(np.uint64)


_EMPTY = np.empty(0, np.float32)


def _f32(t: Tensor) -> np.ndarray:
    """A float32 numpy copy of a small per-channel tensor (scale, bias, shift)."""
    return t.detach().float().contiguous().numpy().copy()


def _affine_arrays(
    scale: Tensor | None, bias: Tensor | None, n_out: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, bias)`` as the kernels take them: empty arrays mean integer output."""
    if scale is None:
        return _EMPTY, _EMPTY
    return _f32(scale), np.zeros(n_out, np.float32) if bias is None else _f32(bias)


def pack_activations(x: Tensor, shift: Tensor | None = None) -> Tensor:
    """As :func:`bnnkit.export.pack.pack_activations`, for float32 ``(N, C, H, W)`` or ``(N, C)``."""
    if x.dtype != torch.float32:
        x = x.float()
    x4 = (x if x.ndim == 4 else x[:, :, None, None]).detach()
    n, c, h, w = x4.shape
    out = np.empty((n, h, w, -(-c // 64)), np.uint64)
    s = _EMPTY if shift is None else _f32(shift)
    _set_threads()
    nhwc = x4.permute(0, 2, 3, 1)
    if nhwc.is_contiguous():  # channels-last (a packed layer's output) or (N, C)
        _pack_nhwc(nhwc.numpy(), s, out)
    else:
        _pack_nchw(x4.contiguous().numpy(), s, out)
    res = torch.from_numpy(out.view(np.int64))
    return res if x.ndim == 4 else res[:, 0, 0]


class ConvPlan(NamedTuple):
    """A layer's weights in the kernel's layout, prepared once (see :func:`prepare_conv`)."""

    wt: np.ndarray  # (kH * kW * words, O) uint64: weight words, output channels innermost
    ws: np.ndarray  # (kH * kW, O) int64: padding correction per kernel position
    scale: np.ndarray  # (O,) float32, or empty for integer output
    bias: np.ndarray  # (O,) float32, or empty


def prepare_conv(w_bits: Tensor, in_channels: int, scale: Tensor | None = None,
                 bias: Tensor | None = None, wsum: Tensor | None = None) -> ConvPlan:  # fmt: skip
    """Transpose the weight words and convert scale / bias once per layer (cached by
    :class:`~bnnkit.export.layers.PackedConv2d`), not on every call."""
    o = w_bits.shape[0]
    if wsum is None:
        wsum = weight_position_sums(w_bits, in_channels)
    wt = np.ascontiguousarray(_u64(w_bits).reshape(o, -1).T)
    ws = np.ascontiguousarray(wsum.numpy().astype(np.int64).T)
    return ConvPlan(wt, ws, *_affine_arrays(scale, bias, o))


def conv2d(x_bits: Tensor, w_bits: Tensor, in_channels: int, kernel_size: tuple[int, int],
           stride: tuple[int, int], padding: tuple[int, int], scale: Tensor | None = None,
           bias: Tensor | None = None, wsum: Tensor | None = None,
           plan: ConvPlan | None = None) -> Tensor:  # fmt: skip
    """Exact packed convolution; int32 ``(N, O, OH, OW)``, or float32 ``scale[o] * dot + bias[o]``
    when ``scale`` is given (or ``plan`` holds one). Returned as a channels-last view."""
    n, h, w, _ = x_bits.shape
    o, kh, kw, _ = w_bits.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = output_size(h, w, (kh, kw), stride, padding)
    if plan is None:
        plan = prepare_conv(w_bits, in_channels, scale, bias, wsum)
    out = np.empty((n, oh, ow, o), np.float32 if plan.scale.shape[0] else np.int32)
    _set_threads()
    _conv(_u64(x_bits), plan.wt, plan.ws, in_channels, kh, kw, sh, sw, ph, pw, plan.scale,
          plan.bias, out)  # fmt: skip
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def linear(x_bits: Tensor, w_bits: Tensor, in_features: int, scale: Tensor | None = None,
           bias: Tensor | None = None) -> Tensor:  # fmt: skip
    """Exact packed matrix product; int32 ``(N, O)`` or float32 ``scale * dot + bias``."""
    n, o = x_bits.shape[0], w_bits.shape[0]
    sc, bi = _affine_arrays(scale, bias, o)
    out = np.empty((n, o), np.float32 if sc.shape[0] else np.int32)
    _set_threads()
    _linear(_u64(x_bits), _u64(w_bits), in_features, sc, bi, out)
    return torch.from_numpy(out)
