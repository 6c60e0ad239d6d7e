"""``irnet``: IR-Net (Libra-PB weights, EDE for weights and activations)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from bnnkit.binarize import EDESign, Scale, channel_mean_abs, ede_sign, standardize
from bnnkit.methods.base import (
    LayerList,
    Method,
    TrainState,
    check_ordered,
    check_range,
    register_method,
)
from bnnkit.nn import BinaryLayer


def ede_schedule(epoch: int, epochs: int, t_min: float, t_max: float) -> tuple[float, float]:
    r"""IR-Net's per-epoch EDE parameters.

    :math:`t = 10^{\log_{10} T_{min} + (\log_{10} T_{max} - \log_{10} T_{min})\,e/E}`,
    :math:`k = \max(1/t, 1)`, with ``e`` the 0-based epoch (so the last epoch has
    :math:`t < T_{max}`, as in the official trainer).
    """
    lo, hi = math.log10(t_min), math.log10(t_max)
    t = 10.0 ** (lo + (hi - lo) * epoch / max(epochs, 1))
    return t, max(1.0 / t, 1.0)


class LibraPBSign(EDESign):
    r"""IR-Net's Libra-PB weight binarizer (balanced, standardised weights) with EDE.

    Per output channel :math:`\hat w = (w - \mu_c) / \sigma_c` (unbiased std, no epsilon,
    differentiable), :math:`b_w = \mathrm{sign}(\hat w)`, backward through EDE
    :math:`k t (1 - \tanh^2(t \hat w))` and then through the standardisation. The
    power-of-two shift scale is :class:`PowerOfTwoScale`.
    """

    def forward(self, x: Tensor) -> Tensor:
        return ede_sign(
            standardize(x, eps=0.0, unbiased=True), self.t.to(x.dtype), self.k.to(x.dtype)
        )

    @torch.no_grad()
    def sign_input(self, x: Tensor) -> Tensor:
        """The standardised weight: its sign is that of the channel-centred weight."""
        return standardize(x, eps=0.0, unbiased=True)

    def inference_shift(self) -> Tensor | None:
        raise NotImplementedError(
            "LibraPBSign standardises its input per output channel: a weight binarizer only"
        )


class PowerOfTwoScale(Scale):
    r"""IR-Net's shift scale :math:`s_c = 2^{\mathrm{round}(\log_2 \mathrm{mean}|\hat w_c|)}`, detached.

    :math:`\hat w` is the Libra-PB standardised weight (unbiased std, no epsilon).
    """

    def forward(self, weight: Tensor) -> Tensor:
        with torch.no_grad():
            m = channel_mean_abs(standardize(weight, eps=0.0, unbiased=True))
            return torch.exp2(torch.round(torch.log2(m)))


@register_method
@dataclass(frozen=True)
class IRNet(Method):
    r"""IR-Net (Qin et al., CVPR 2020): Libra-PB + EDE.

    Weights: :math:`s_c\,\mathrm{sign}(\hat w)` (:class:`LibraPBSign`, :class:`PowerOfTwoScale`).
    Activations: :math:`\mathrm{sign}(a)` with EDE. Both EDEs follow
    :func:`ede_schedule` once per epoch (``on_step_start`` writes ``t`` and ``k``).

    Args:
        t_min: :math:`T_{min}`; 1e-3 in the ResNet-20 W1A1 trainer (the VGG-Small and W1A32
            scripts use 0.1).
        t_max: :math:`T_{max}` = 10.
    """

    name: ClassVar[str] = "irnet"
    t_min: float = 1e-3
    t_max: float = 10.0

    def __post_init__(self) -> None:
        check_range(self, "t_min", low=0.0, low_inclusive=False)
        check_range(self, "t_max", low=0.0, low_inclusive=False)
        check_ordered(self, "t_min", "t_max")

    def _initial(self) -> tuple[float, float]:
        return ede_schedule(0, 1, self.t_min, self.t_max)

    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return LibraPBSign(*self._initial())

    def build_scale(self, layer: BinaryLayer) -> Scale:
        return PowerOfTwoScale()

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return EDESign(*self._initial())

    def on_step_start(self, layers: LayerList, state: TrainState) -> None:
        t, k = ede_schedule(state.epoch, state.epochs, self.t_min, self.t_max)
        for _, layer in layers:
            for binarizer in (layer.weight_binarizer, layer.input_binarizer):
                if isinstance(binarizer, EDESign):
                    binarizer.t.fill_(t)
                    binarizer.k.fill_(k)
