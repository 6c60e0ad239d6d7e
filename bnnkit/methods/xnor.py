"""``xnor``: XNOR-Net weight scaling (per-channel mean|W|) with sign activations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from bnnkit.binarize import ClippedSTESign, MeanAbsScale, Scale
from bnnkit.methods.base import Method, register_method
from bnnkit.nn import BinaryLayer


@register_method
@dataclass(frozen=True)
class XNOR(Method):
    r"""XNOR-Net binarization (Rastegari et al., ECCV 2016), weight side.

    Weights: :math:`\tilde W = \alpha_c\,\mathrm{sign}(W)`, :math:`\alpha_c = \lVert W_c\rVert_1/n`
    per output channel, detached; gradient :math:`\partial C/\partial W =
    \partial C/\partial \tilde W \cdot \alpha_c 1_{|W| \le 1}`. Inputs: :math:`\mathrm{sign}(x)`
    with the clipped STE :math:`1_{|x| \le 1}`.

    Departures from the paper, on purpose:

    * :math:`\alpha` is detached, so the paper's :math:`1/n` gradient term through
      :math:`\alpha` is dropped (as in most re-implementations and larq-zoo).
    * The activation scale :math:`K` (per-pixel mean |I| over channels, box-filtered) is not
      implemented: it multiplies the *output* per spatial position, so it cannot be folded
      into the input or the weight, and the BatchNorm that follows every binary conv in
      bnnkit's models absorbs a per-channel rescaling of the output anyway.
    """

    name: ClassVar[str] = "xnor"

    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return ClippedSTESign()

    def build_scale(self, layer: BinaryLayer) -> Scale:
        return MeanAbsScale(straight_through=False)

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return ClippedSTESign()
