r"""Packed inference layers: ``PackedConv2d`` and ``PackedLinear``.

A packed layer computes, for an input ``x``::

    y[n, o, ...] = scale[o] * dot(sign(x + shift), sign(W))[n, o, ...] + bias[o]

where ``dot`` is the exact integer XNOR-popcount product of the sign bits (zero padding of
the ±1 input reproduced exactly), ``shift`` the per-channel input shift of the method
(ReActNet's RSign ``b``; absent for a plain sign), ``scale`` the folded per-output-channel
weight scale (times a folded batch norm's ``gamma / sqrt(var + eps)``) and ``bias`` the folded
conv bias and batch-norm shift. The weights are stored only as bits (``weight_bits``, int64
words, layout in :mod:`bnnkit.export.pack`). Which kernel runs is chosen per layer
(``kernel="auto"``: numba where installed, else the pure-torch reference).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnnkit.export.kernels import get_kernel
from bnnkit.export.kernels.reference import padding_correction
from bnnkit.export.pack import num_words


class _Packed(nn.Module):
    weight_bits: Tensor
    scale: Tensor
    bias: Tensor
    input_shift: Tensor | None

    def _init_packed(self, bits_shape: tuple[int, ...], out_channels: int, in_channels: int,
                     has_shift: bool, kernel: str) -> None:  # fmt: skip
        self.register_buffer("weight_bits", torch.zeros(bits_shape, dtype=torch.int64))
        self.register_buffer("scale", torch.ones(out_channels))
        self.register_buffer("bias", torch.zeros(out_channels))
        self.register_buffer("input_shift", torch.zeros(in_channels) if has_shift else None)
        self.kernel_name = kernel
        self._kernel = get_kernel(kernel)
        self.folded_bn: str | None = None  # qualified name of the batch norm folded in
        self._plan: object | None = None  # the kernel's prepared weights (numba), see refresh()

    def refresh(self) -> None:
        """Drop what the kernel prepared from the buffers (done by ``load_state_dict``,
        :meth:`fold_affine` and :meth:`set_kernel`; call it after editing buffers in place)."""
        self._plan = None

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh()

    def set_kernel(self, name: str) -> None:
        """Switch the kernel (``"auto"``, ``"numba"``, ``"reference"``)."""
        self._kernel = get_kernel(name)
        self.kernel_name = name
        self.refresh()

    def fold_affine(self, mul: Tensor, add: Tensor) -> None:
        """Fold a following per-channel affine map ``y -> mul * y + add`` (a batch norm in eval)."""
        with torch.no_grad():
            self.scale.mul_(mul)
            self.bias.mul_(mul).add_(add)
        self.refresh()

    def packed_bytes(self) -> int:
        """Bytes of the packed weight bits."""
        return self.weight_bits.numel() * self.weight_bits.element_size()


class PackedConv2d(_Packed):
    """Packed binary ``conv2d`` (groups 1, dilation 1). The ±1 input is padded with
    ``pad_value`` (0, as the papers train, or ±1, see :class:`bnnkit.nn.BinaryConv2d`).
    See the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
                 stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0), *,
                 has_shift: bool = False, kernel: str = "auto",
                 pad_value: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.pad_value = float(pad_value)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.stride = tuple(int(s) for s in stride)
        self.padding = tuple(int(p) for p in padding)
        shape = (out_channels, *self.kernel_size, num_words(in_channels))
        self._init_packed(shape, out_channels, in_channels, has_shift, kernel)
        self.register_buffer("_wsum", None, persistent=False)

    def refresh(self) -> None:
        super().refresh()
        self._wsum = None

    def position_sums(self) -> Tensor:
        """``(O, kH * kW)`` padding correction per kernel position (``(1 - pad_value)`` times
        the sums of the weight signs: see :func:`~bnnkit.export.kernels.reference.padding_correction`)."""
        if self._wsum is None:
            self._wsum = padding_correction(self.weight_bits, self.in_channels, self.pad_value)
        return self._wsum

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PackedConv2d expects (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}"
            )
        k = self._kernel
        if self._plan is None and k.prepare_conv is not None:
            self._plan = k.prepare_conv(self.weight_bits, self.in_channels, self.scale,
                                        self.bias, self.position_sums())  # fmt: skip
        bits = k.pack_activations(x, self.input_shift)
        return k.conv2d(bits, self.weight_bits, self.in_channels, self.kernel_size, self.stride,
                        self.padding, self.scale, self.bias, self.position_sums(),
                        plan=self._plan)  # fmt: skip

    def extra_repr(self) -> str:
        pad = f", pad_value={self.pad_value:g}" if self.pad_value else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{pad}, "
                f"shift={self.input_shift is not None}, kernel={self.kernel_name!r}")  # fmt: skip


class PackedLinear(_Packed):
    """Packed binary ``linear``. See the module docstring."""

    def __init__(self, in_features: int, out_features: int, *, has_shift: bool = False,
                 kernel: str = "auto") -> None:  # fmt: skip
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        shape = (out_features, num_words(in_features))
        self._init_packed(shape, out_features, in_features, has_shift, kernel)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"PackedLinear expects (N, {self.in_features}) input, got {tuple(x.shape)}"
            )
        k = self._kernel
        bits = k.pack_activations(x, self.input_shift)
        return k.linear(bits, self.weight_bits, self.in_features, self.scale, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, "
                f"shift={self.input_shift is not None}, kernel={self.kernel_name!r}")  # fmt: skip
