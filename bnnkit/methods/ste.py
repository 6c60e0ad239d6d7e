"""``ste``: plain W1A1 sign with the clipped straight-through estimator, no scale."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from bnnkit.binarize import ClippedSTESign
from bnnkit.methods.base import Method, check_range, register_method
from bnnkit.nn import BinaryLayer


@register_method
@dataclass(frozen=True)
class STE(Method):
    r"""BinaryNet-style W1A1: sign of weights and inputs, clipped STE, no scale.

    Forward :math:`y = \mathrm{sign}(W) * \mathrm{sign}(x)`; backward
    :math:`\partial\,\mathrm{sign}(u)/\partial u := 1_{|u| \le c}` for both (``clip_value`` c).
    Hubara et al., "Binarized Neural Networks", NeurIPS 2016.

    Args:
        clip_value: gradient window c of the STE (default 1).
    """

    name: ClassVar[str] = "ste"
    clip_value: float = 1.0

    def __post_init__(self) -> None:
        check_range(self, "clip_value", low=0.0, low_inclusive=False)

    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return ClippedSTESign(self.clip_value)

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return ClippedSTESign(self.clip_value)
