"""Reference packed kernels in pure torch: exact integer XOR + popcount arithmetic.

They define correct behaviour (the fast kernels are tested against them) and run anywhere
torch runs; they are slow (a byte lookup table for popcount, chunked to bound memory).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnnkit.export.pack import popcount

_CHUNK_WORDS = 1 << 22  # XOR words per chunk (the popcount LUT expands each to 8 int64)


def _valid_mask(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> Tensor:  # fmt: skip
    """``(L, kH * kW)`` bool: is kernel position ``p`` of output pixel ``l`` inside the image."""
    ones = torch.ones(1, 1, h, w)
    cols = torch.nn.functional.unfold(ones, kernel, padding=padding, stride=stride)
    return cols[0].t() > 0


def output_size(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> tuple[int, int]:  # fmt: skip
    """``(OH, OW)`` of a convolution with zero padding, dilation 1."""
    return ((h + 2 * padding[0] - kernel[0]) // stride[0] + 1,
            (w + 2 * padding[1] - kernel[1]) // stride[1] + 1)  # fmt: skip


def weight_position_sums(w_bits: Tensor, in_channels: int) -> Tensor:
    """``S[o, p] = sum_c sign(w[o, c, p])`` = ``C - 2 popcount(w_bits[o, p])``, int64 ``(O, P)``:
    what a kernel position contributes when the input there is the +1 of an all-zero word,
    i.e. the correction to subtract at zero-padded positions."""
    o = w_bits.shape[0]
    return in_channels - 2 * popcount(w_bits.reshape(o, -1, w_bits.shape[-1])).sum(-1)


def _xor_popcount(a: Tensor, b: Tensor) -> Tensor:
    """``sum_k popcount(a[l, k] ^ b[o, k])`` as ``(L, O)`` int64, in chunks of rows of ``a``."""
    rows = max(1, _CHUNK_WORDS // max(1, b.numel()))
    out = [popcount(a[i : i + rows, None, :] ^ b[None]).sum(-1) for i in range(0, a.shape[0], rows)]
    return torch.cat(out) if out else a.new_zeros((0, b.shape[0]))


def padding_correction(w_bits: Tensor, in_channels: int, pad_value: float = 0.0) -> Tensor:
    """``(1 - pad_value) * S[o, p]`` (int64 ``(O, P)``): what to subtract at a padded kernel
    position, which the kernels fill with +1 words, so that it contributes ``pad_value * S``
    (0 for zero padding, the Larq Compute Engine correction; nothing for +1; ``2 S`` for -1)."""
    if pad_value not in (0.0, 1.0, -1.0):
        raise ValueError(f"pad_value must be 0, 1 or -1, got {pad_value}")
    return int(1 - pad_value) * weight_position_sums(w_bits, in_channels)


def conv2d(x_bits: Tensor, w_bits: Tensor, in_channels: int, kernel_size: tuple[int, int],
           stride: tuple[int, int], padding: tuple[int, int],
           correction: Tensor | None = None) -> Tensor:  # fmt: skip
    """Exact ``conv2d(sign(x), sign(w))`` of the padded ±1 map, int32 ``(N, O, OH, OW)``.

    Every kernel position is evaluated as ``C - 2 popcount(x ^ w)``, with all-zero words (+1)
    at padded positions; the ``correction`` of each padded position is then subtracted
    (:func:`padding_correction`; default: zero padding, Larq Compute Engine's correction, so
    padding contributes exactly 0).
    """
    n, h, w, words = x_bits.shape
    o, kh, kw, _ = w_bits.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = output_size(h, w, (kh, kw), (sh, sw), (ph, pw))
    xp = x_bits.new_zeros((n, h + 2 * ph, w + 2 * pw, words))
    xp[:, ph : ph + h, pw : pw + w] = x_bits
    cols = xp.unfold(1, kh, sh).unfold(2, kw, sw)  # (N, OH, OW, words, kH, kW)
    cols = cols.permute(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, kh * kw * words)
    acc = _xor_popcount(cols, w_bits.reshape(o, -1)).view(n, oh * ow, o)
    positions = kh * kw
    dot = positions * in_channels - 2 * acc
    invalid = (~_valid_mask(h, w, (kh, kw), (sh, sw), (ph, pw))).to(torch.int64)  # (L, P)
    if correction is None:
        correction = weight_position_sums(w_bits, in_channels)
    dot = dot - invalid @ correction.t()
    return dot.view(n, oh, ow, o).permute(0, 3, 1, 2).to(torch.int32).contiguous()


def linear(x_bits: Tensor, w_bits: Tensor, in_features: int) -> Tensor:
    """Exact ``sign(x) @ sign(w).T``, int32 ``(N, O)``."""
    return (in_features - 2 * _xor_popcount(x_bits, w_bits)).to(torch.int32)
