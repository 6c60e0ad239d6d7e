r"""Bit packing of signs into 64-bit words.

Layout (the contract of every packed tensor in bnnkit):

- sign(x) = +1 if x >= 0 else -1; sign(0) = sign(-0) = +1 (as in training).
- A *sign bit* is 1 for -1 and 0 for +1, so ``x_b * w_b = 1 - 2 (bx XOR bw)`` and a dot
  product of n signs is :math:`n - 2\,\mathrm{popcount}(bx \oplus bw)`.
- Words are ``torch.int64`` (the 64-bit pattern; bit 63 set reads as a negative int64).
  Bit ``j`` (``j = 0`` the least significant) of word ``w`` holds element ``64 w + j`` of the
  packed axis.
- Padding bits (positions ``>= n`` in the last word) are 0 in weights *and* activations: their
  XOR is 0, so they can never change a popcount.

Convolution weights ``(O, C, kH, kW)`` are packed along ``C`` for each ``(o, kh, kw)`` into
``(O, kH, kW, ceil(C / 64))`` words, so the reduction axis ``C * kH * kW`` is stored as
``kH * kW`` groups of channel words; activations ``(N, C, H, W)`` are packed along ``C`` per pixel
into ``(N, H, W, ceil(C / 64))`` (channels-last bits, as Larq Compute Engine stores them).
"""

from __future__ import annotations

import torch
from torch import Tensor

WORD_BITS = 64

# 2**j for j = 0..63 as int64 (2**63 wraps to the int64 minimum: the bit pattern is what counts)
_POWERS = torch.tensor(
    [1 << j if j < 63 else -(1 << 63) for j in range(WORD_BITS)], dtype=torch.int64
)
_BYTE_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def num_words(n: int) -> int:
    """Words needed for ``n`` bits: ``ceil(n / 64)``."""
    return -(-n // WORD_BITS)


def sign_bits(x: Tensor) -> Tensor:
    """``x < 0`` as a bool tensor: the sign bit of :math:`\\mathrm{sign}(x)` (0 and -0 give 0)."""
    return x < 0


def pack_bits(bits: Tensor) -> Tensor:
    """Pack a bool tensor ``(..., n)`` along its last dim into int64 words ``(..., ceil(n/64))``."""
    n = bits.shape[-1]
    words = num_words(n)
    pad = words * WORD_BITS - n
    b = bits.to(torch.int64)
    if pad:
        b = torch.nn.functional.pad(b, (0, pad))
    b = b.reshape(*bits.shape[:-1], words, WORD_BITS)
    # a sum of distinct powers of two equals their OR; int64 addition wraps like the pattern
    return (b * _POWERS.to(b.device)).sum(dim=-1)


def pack_signs(x: Tensor) -> Tensor:
    """Sign bits of ``x`` packed along the last dim: ``(..., n)`` float -> ``(..., ceil(n/64))`` int64.

    Raises:
        ValueError: ``x`` is not a floating tensor, or its last dim is empty.
    """
    if not x.is_floating_point():
        raise ValueError(
            f"pack_signs needs a floating tensor, got {x.dtype}; pass the float values"
        )
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"pack_signs needs a non-empty last dim, got shape {tuple(x.shape)}")
    return pack_bits(sign_bits(x))


def unpack_signs(words: Tensor, n: int) -> Tensor:
    """Inverse of :func:`pack_signs`: int64 ``(..., W)`` -> float32 ±1 ``(..., n)``.

    Raises:
        ValueError: ``n < 1`` or ``n > 64 * W``.
    """
    capacity = WORD_BITS * (words.shape[-1] if words.ndim else 0)
    if not 1 <= n <= capacity:
        raise ValueError(
            f"unpack_signs: n={n} must be in [1, {capacity}] for {tuple(words.shape)} words"
        )
    bits = (words.unsqueeze(-1) & _POWERS.to(words.device)) != 0
    bits = bits.flatten(-2)[..., :n]
    return 1.0 - 2.0 * bits.to(torch.float32)


def popcount(words: Tensor) -> Tensor:
    """Number of 1 bits of each int64 word (its 64-bit pattern), exact, as int64."""
    if words.dtype != torch.int64:
        raise ValueError(f"popcount takes int64 words, got {words.dtype}")
    b = words.contiguous().view(torch.uint8).to(torch.int64)
    return _BYTE_POPCOUNT.to(words.device)[b].view(*words.shape, 8).sum(dim=-1)


def pack_conv_weight(w: Tensor) -> Tensor:
    """Convolution weight ``(O, C, kH, kW)`` -> sign bits ``(O, kH, kW, ceil(C/64))``."""
    if w.ndim != 4:
        raise ValueError(
            f"pack_conv_weight takes an (O, C, kH, kW) weight, got shape {tuple(w.shape)}"
        )
    return pack_signs(w.permute(0, 2, 3, 1))


def pack_activations(x: Tensor, shift: Tensor | None = None) -> Tensor:
    """Activations ``(N, C, H, W)`` -> sign bits of ``x + shift_c`` per pixel, ``(N, H, W, ceil(C/64))``;
    ``(N, C)`` -> ``(N, ceil(C/64))``. ``shift``: ``(C,)`` added in float before the sign, or None."""
    if x.ndim not in (2, 4):
        raise ValueError(
            f"pack_activations takes (N, C) or (N, C, H, W), got shape {tuple(x.shape)}"
        )
    if shift is not None:
        x = x + shift.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
    return pack_signs(x if x.ndim == 2 else x.permute(0, 2, 3, 1))
