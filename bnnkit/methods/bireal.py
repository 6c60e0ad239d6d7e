"""``bireal``: Bi-Real Net binarization (ApproxSign inputs, mean|W| x sign weights)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from bnnkit.binarize import ApproxSign, ClippedSTESign, MeanAbsScale, Scale
from bnnkit.methods.base import Method, register_method
from bnnkit.nn import BinaryLayer


@register_method
@dataclass(frozen=True)
class BiReal(Method):
    r"""Bi-Real Net (Liu et al., ECCV 2018), as in its official PyTorch code.

    Inputs: :math:`\mathrm{sign}(x)` with ApproxSign, :math:`\partial/\partial x =
    \max(0, 2 - 2|x|)`. Weights: :math:`\alpha_c\,\mathrm{sign}(W)` with
    :math:`\alpha_c = \mathrm{mean}|W_c|` detached, and the straight-through gradient of
    ``clamp(W, -1, 1)``: :math:`1_{|W| \le 1}` (the scale does not appear in the gradient,
    as in the code; the paper's magnitude-aware gradient is the ``magnitude_aware_sign``
    binarizer). The Bi-Real shortcut around every binary conv is a property of the model
    (``resnet20``, ``resnet18``...), not of the method.
    """

    name: ClassVar[str] = "bireal"

    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return ClippedSTESign()

    def build_scale(self, layer: BinaryLayer) -> Scale:
        return MeanAbsScale(straight_through=True)

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return ApproxSign()
