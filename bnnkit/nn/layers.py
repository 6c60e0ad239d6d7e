"""Binary layers: ``nn.Conv2d`` / ``nn.Linear`` plus a weight binarizer, an input binarizer
and a weight scale.

``BinaryConv2d`` and ``BinaryLinear`` take exactly the arguments (and defaults) of the torch
layers, plus keyword-only ``weight_binarizer``, ``input_binarizer`` and ``scale`` (each a
registry name, a module, or ``None``). With none of them they compute exactly what the torch
layer computes. The output is always::

    conv(binarized_input(x), binarized_weight()) + bias

so ``binarized_weight()`` is the tensor the convolution really uses (weight-side scale
folded in) and ``binarized_input(x)`` what the input becomes. Padding is applied *after*
input binarization (zero padding of a ±1 map, as every paper's code trains).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bnnkit.binarize import Binarizer, Scale, get_binarizer, get_scale
from bnnkit.binarize.autograd import sign_recompute_hooks
from bnnkit.errors import ConfigError
from bnnkit.nn.history import SignHistory


class BinaryLayer(nn.Module):
    """Common part of :class:`BinaryConv2d` and :class:`BinaryLinear`.

    Attributes:
        weight_binarizer: module applied to the latent weight, or ``None``.
        input_binarizer: module applied to the layer input, or ``None``.
        scale: a :class:`bnnkit.binarize.Scale` (weight-side, per output channel) or ``None``.
        method_state: the attached method's per-layer buffers, one module per method part,
            keyed by the part's name (``layer.method_state["ovsw"]``), or ``None``.
        sign_history: the :class:`~bnnkit.nn.SignHistory` of the binary weight (built by
            :func:`bnnkit.binarize_` when the weight is binarized), or ``None``.
        method_name: name of the attached method (set by :func:`bnnkit.binarize_`), or ``None``.
    """

    weight: nn.Parameter
    weight_binarizer: nn.Module | None
    input_binarizer: nn.Module | None
    scale: Scale | None
    method_state: nn.ModuleDict | None
    sign_history: SignHistory | None

    def _init_binary(self, weight_binarizer: Any, input_binarizer: Any, scale: Any) -> None:
        self.register_module("weight_binarizer", get_binarizer(weight_binarizer))
        self.register_module("input_binarizer", get_binarizer(input_binarizer))
        self.register_module("scale", get_scale(scale, weight=self.weight))
        self.register_module("method_state", None)
        self.register_module("sign_history", None)
        self.method_name: str | None = None

    @property
    def num_input_channels(self) -> int:
        raise NotImplementedError

    @property
    def num_output_channels(self) -> int:
        raise NotImplementedError

    @property
    def weight_bits(self) -> int:
        """1 if the weight is binarized (two-valued), else 32 (none, or a real-valued weight
        transform such as BiPer's stage-1 sine)."""
        return 1 if self.binary_weight else 32

    @property
    def binary_weight(self) -> bool:
        """Whether the weight binarizer gives two values per channel (see ``Binarizer.two_valued``)."""
        b = self.weight_binarizer
        return b is not None and (not isinstance(b, Binarizer) or b.two_valued)

    @property
    def input_bits(self) -> int:
        """1 if the input is binarized, else 32."""
        return 1 if self.input_binarizer is not None else 32

    def binarized_weight(self) -> Tensor:
        """The weight the layer really uses: ``scale(W) * weight_binarizer(W)``."""
        w = self.weight
        b = w if self.weight_binarizer is None else self.weight_binarizer(w)
        return b if self.scale is None else self.scale.scale_weight(b, w)

    def sign_input(self) -> Tensor:
        """The tensor whose sign the binarized weight is: ``weight_binarizer.sign_input(W)``
        for a :class:`~bnnkit.binarize.Binarizer`, else the latent weight ``W`` itself."""
        b = self.weight_binarizer
        if b is None:
            raise ValueError(
                f"{type(self).__name__} has no weight binarizer: its weight has no sign"
            )
        return b.sign_input(self.weight) if isinstance(b, Binarizer) else self.weight

    def binarized_input(self, x: Tensor) -> Tensor:
        """What the input becomes before the product: ``input_binarizer(x)`` or ``x``."""
        return x if self.input_binarizer is None else self.input_binarizer(x)

    def _saving_memory(self) -> Any:
        """Context for the product: in eager training with a binarized input, the ±1 input
        is not stored for the backward but recomputed from the binarizer's saved input
        (:func:`bnnkit.binarize.autograd.sign_recompute_hooks`); under ``torch.compile`` the
        compiler plans memory itself."""
        if (
            self.input_binarizer is not None
            and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        ):
            return sign_recompute_hooks()
        return contextlib.nullcontext()

    def _binary_repr(self) -> str:
        parts = [f"W{self.weight_bits}A{self.input_bits}"]
        if self.method_name is not None:
            parts.append(f"method={self.method_name!r}")
        return ", ".join(parts)


PAD_VALUES = (0.0, 1.0, -1.0)


class BinaryConv2d(nn.Conv2d, BinaryLayer):
    """``nn.Conv2d`` with binarized weights and/or inputs.

    Args: those of ``nn.Conv2d``, plus keyword-only ``weight_binarizer``, ``input_binarizer``
    (names from :func:`bnnkit.binarize.list_binarizers`, modules, or ``None``), ``scale``
    (``"none"``, ``"mean_abs"``, ``"learnable"``, a :class:`~bnnkit.binarize.Scale`, or ``None``)
    and ``pad_value``: what the binarized input is padded with, ``0`` (as every paper's code
    trains; the default) or ``+1`` / ``-1`` (larq's ``pad_values``: the conv then is a true ±1
    convolution at the border too, which Larq Compute Engine's and OpenVINO's binary kernels
    run natively). With ``pad_value`` ±1 the padded input is stored for the backward (one
    copy of it; zero padding stores none).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        weight_binarizer: str | nn.Module | None = None,
        input_binarizer: str | nn.Module | None = None,
        scale: str | Scale | None = None,
        pad_value: float = 0.0,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        self._init_binary(weight_binarizer, input_binarizer, scale)
        self.pad_value = pad_value

    @property
    def pad_value(self) -> float:
        """The value the binarized input is padded with: 0, +1 or -1."""
        return self._pad_value

    @pad_value.setter
    def pad_value(self, value: float) -> None:
        if isinstance(value, bool) or value not in PAD_VALUES:
            raise ConfigError("is not valid", location=("pad_value",), value=value,
                              allowed="0 (zero padding), 1 or -1")  # fmt: skip
        inputs = self.input_binarizer
        if value and isinstance(inputs, Binarizer) and inputs.affine_output:
            raise ConfigError(f"cannot be used with {type(inputs).__name__}: +-1 is not a member "
                              "of its output set (zero padding only)", location=("pad_value",),
                              value=value, allowed="0")  # fmt: skip
        if value and self.padding_mode != "zeros":
            raise ConfigError(f"needs padding_mode='zeros', not {self.padding_mode!r}",
                              location=("pad_value",), value=value)  # fmt: skip
        self._pad_value = float(value)

    def explicit_padding(self) -> tuple[int, int]:
        """``(pad_h, pad_w)`` on each side (``padding='same'`` resolved for odd kernels)."""
        if self.padding == "valid":
            return (0, 0)
        if self.padding == "same":
            if any((d * (k - 1)) % 2 for k, d in zip(self.kernel_size, self.dilation, strict=True)):
                raise ConfigError("padding='same' with an even kernel pads unevenly",
                                  location=("padding",), value="same")  # fmt: skip
            return tuple(
                d * (k - 1) // 2 for k, d in zip(self.kernel_size, self.dilation, strict=True)
            )
        return (int(self.padding[0]), int(self.padding[1]))

    @property
    def num_input_channels(self) -> int:
        """Channels of the input (``in_channels``): the size of per-channel input parameters."""
        return self.in_channels

    @property
    def num_output_channels(self) -> int:
        """Output channels (``out_channels``): the size of per-channel weight scales."""
        return self.out_channels

    def forward(self, x: Tensor) -> Tensor:
        xb, wb = self.binarized_input(x), self.binarized_weight()
        if self._pad_value:
            ph, pw = self.explicit_padding()
            xb = F.pad(xb, (pw, pw, ph, ph), value=self._pad_value)
            return F.conv2d(xb, wb, self.bias, self.stride, 0, self.dilation, self.groups)
        with self._saving_memory():
            return self._conv_forward(xb, wb, self.bias)

    def extra_repr(self) -> str:
        pad = f", pad_value={self._pad_value:g}" if self._pad_value else ""
        return f"{super().extra_repr()}{pad}, {self._binary_repr()}"

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> BinaryConv2d:
        """A ``BinaryConv2d`` (no binarizers yet) sharing ``conv``'s weight and bias Parameters."""
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",
        )
        new.weight, new.bias = conv.weight, conv.bias
        return new.train(conv.training)

    def to_float(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` sharing this layer's weight and bias Parameters."""
        new = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias is not None,
            self.padding_mode,
            device="meta",
        )
        new.weight, new.bias = self.weight, self.bias
        return new.train(self.training)


class BinaryLinear(nn.Linear, BinaryLayer):
    """``nn.Linear`` with binarized weights and/or inputs (keywords as :class:`BinaryConv2d`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        weight_binarizer: str | nn.Module | None = None,
        input_binarizer: str | nn.Module | None = None,
        scale: str | Scale | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_binary(weight_binarizer, input_binarizer, scale)

    @property
    def num_input_channels(self) -> int:
        """Input features (``in_features``): the size of per-channel input parameters."""
        return self.in_features

    @property
    def num_output_channels(self) -> int:
        """Output features (``out_features``): the size of per-channel weight scales."""
        return self.out_features

    def forward(self, x: Tensor) -> Tensor:
        xb, wb = self.binarized_input(x), self.binarized_weight()
        with self._saving_memory():
            return F.linear(xb, wb, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._binary_repr()}"

    @classmethod
    def from_float(cls, linear: nn.Linear) -> BinaryLinear:
        """A ``BinaryLinear`` (no binarizers yet) sharing ``linear``'s Parameters."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        return new.train(linear.training)

    def to_float(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's weight and bias Parameters."""
        new = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        new.weight, new.bias = self.weight, self.bias
        return new.train(self.training)


def is_binary_layer(module: nn.Module) -> bool:
    """True for :class:`BinaryConv2d` and :class:`BinaryLinear` (and subclasses)."""
    return isinstance(module, BinaryLayer)


LayerList = list[tuple[str, BinaryLayer]]


def binary_layers(model: nn.Module) -> LayerList:
    """The model's ``BinaryConv2d`` / ``BinaryLinear`` layers as ``(qualified_name, layer)``.

    Order is module registration order, which is the forward order for every bnnkit model
    (and for any model that defines its layers in the order it uses them).
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryLayer)]


def _histories(model_or_layers: nn.Module | Iterable[tuple[str, nn.Module]]) -> list[BinaryLayer]:
    pairs = (
        binary_layers(model_or_layers)
        if isinstance(model_or_layers, nn.Module)
        else model_or_layers
    )
    return [m for _, m in pairs if isinstance(m, BinaryLayer) and m.sign_history is not None]


@torch.no_grad()
def update_sign_history(model_or_layers: nn.Module | Iterable[tuple[str, nn.Module]]) -> None:
    """Update every binary layer's :class:`~bnnkit.nn.SignHistory`: once per training step,
    right after ``optimizer.step()`` (see :mod:`bnnkit.nn.history`).

    Args:
        model_or_layers: a model, or ``binary_layers(model)`` pairs.
    """
    for layer in _histories(model_or_layers):
        layer.sign_history.update(layer.sign_input())


@torch.no_grad()
def reset_sign_history(model_or_layers: nn.Module | Iterable[tuple[str, nn.Module]]) -> None:
    """Make every binary layer's current sign its history's reference, with no flips (at the
    start of a training stage, after its weights were loaded)."""
    for layer in _histories(model_or_layers):
        layer.sign_history.reset(layer.sign_input())


__all__ = [
    "BinaryConv2d",
    "BinaryLayer",
    "BinaryLinear",
    "LayerList",
    "binary_layers",
    "is_binary_layer",
    "reset_sign_history",
    "update_sign_history",
]
