"""Packed-layer kernels: ``reference`` (pure torch, exact, everywhere) and ``numba`` (fast CPU).

``get_kernel("auto")`` picks ``numba`` when it is installed (``pip install bnnkit[deploy]``),
else ``reference``. Every kernel offers::

    kernel.pack_activations(x, shift=None)                     -> int64 bits (N, H, W, words)
    kernel.conv2d(x_bits, w_bits, in_channels, kernel_size, stride, padding,
                  scale=None, bias=None)                        -> int32 dots (N, O, OH, OW)
                                                                   or float32 scale*dot + bias
    kernel.linear(x_bits, w_bits, in_features, scale=None, bias=None)

with the layouts of :mod:`bnnkit.export.pack`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bnnkit.errors import ConfigError
from bnnkit.export import pack
from bnnkit.export.kernels import reference as _ref


@dataclass(frozen=True)
class Kernel:
    """A named set of packed functions (see the module docstring)."""

    name: str
    pack_activations: Any
    conv2d: Any
    linear: Any
    prepare_conv: Any = None  # (w_bits, in_channels, scale, bias, wsum) -> plan for conv2d(plan=)


def _affine(
    dot: Tensor, scale: Tensor | None, bias: Tensor | None, view: tuple[int, ...]
) -> Tensor:
    if scale is None:
        return dot
    out = dot.to(torch.float32) * scale.view(view)
    return out if bias is None else out + bias.view(view)


def _ref_conv2d(x_bits, w_bits, in_channels, kernel_size, stride, padding, scale=None, bias=None,
                wsum=None, plan=None):  # fmt: skip
    dot = _ref.conv2d(x_bits, w_bits, in_channels, kernel_size, stride, padding, wsum)
    return _affine(dot, scale, bias, (1, -1, 1, 1))


def _ref_linear(x_bits, w_bits, in_features, scale=None, bias=None):
    return _affine(_ref.linear(x_bits, w_bits, in_features), scale, bias, (1, -1))


REFERENCE = Kernel("reference", pack.pack_activations, _ref_conv2d, _ref_linear)


def numba_available() -> bool:
    """Whether numba can be imported (the fast CPU kernels)."""
    return importlib.util.find_spec("numba") is not None


def list_kernels() -> list[str]:
    """Kernels usable here: always ``reference``; ``numba`` when numba is installed."""
    return ["reference", "numba"] if numba_available() else ["reference"]


def get_kernel(name: str = "auto") -> Kernel:
    """``"auto"`` (numba where installed, else reference), ``"numba"`` or ``"reference"``.

    Raises:
        ConfigError: unknown or unavailable kernel (the message lists the available ones).
    """
    available = list_kernels()
    if name == "auto":
        name = available[-1]
    if name not in available:
        hint = " (numba: pip install 'bnnkit[deploy]')" if name == "numba" else ""
        raise ConfigError("is not an available kernel", location=("kernel",), value=name,
                          allowed=", ".join(available) + hint)  # fmt: skip
    if name == "reference":
        return REFERENCE
    from bnnkit.export.kernels import numba_cpu as nb

    return Kernel("numba", nb.pack_activations, nb.conv2d, nb.linear, nb.prepare_conv)
