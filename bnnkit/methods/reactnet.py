"""``reactnet``: ReActNet binarization (RSign inputs, mean|W| x sign weights)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from bnnkit.binarize import ClippedSTESign, MeanAbsScale, Scale
from bnnkit.methods.base import Method, check_choice, register_method
from bnnkit.nn import BinaryLayer, LearnableBias, RSign


def react_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """ReActNet's Adam groups: 4-D parameters or names containing ``conv`` are decayed; the
    rest (BN, PReLU slopes, the FC, scales) get weight decay 0.

    The learnable shifts (``LearnableBias``, ``RSign``) are decayed too: the official code
    stores them with shape ``(1, C, 1, 1)``, i.e. 4-D, where bnnkit stores ``(C,)``.
    """
    shifts = {
        id(p)
        for m in model.modules()
        if isinstance(m, (LearnableBias, RSign))
        for p in m.parameters()
    }
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            decayed = p.ndim == 4 or "conv" in name or id(p) in shifts
            (decay if decayed else no_decay).append(p)
    return [
        {"name": "decay", "params": decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


@register_method
@dataclass(frozen=True)
class ReActNet(Method):
    r"""ReActNet (Liu et al., ECCV 2020), as in the official code.

    Inputs: RSign, :math:`\mathrm{sign}(x + b_c)` with a learnable per-channel shift
    (ReActNet's ``move0``) and ApproxSign backward. Weights (step 2): :math:`\alpha_c
    \mathrm{sign}(W)`, :math:`\alpha_c = \mathrm{mean}|W_c|` detached, gradient that of
    ``clamp(W, -1, 1)``, i.e. :math:`1_{|W| \le 1}` without :math:`\alpha`.
    Optimizer groups: :func:`react_param_groups`.

    Args:
        weights: ``"binary"`` (W1A1, step 2) or ``"float"`` (W32A1, step 1 of the two-step
            recipe: the conv weight stays real-valued, only inputs are binarized).

    Departure: each binary layer gets its own RSign shift. ReActNet-A's two parallel 1x1
    convs of a widening block share one shift in the official code; here each has its own
    (C_in extra parameters in those 5 blocks).
    """

    name: ClassVar[str] = "reactnet"
    weights: str = "binary"

    def __post_init__(self) -> None:
        check_choice(self, "weights", ("binary", "float"))

    @property
    def binarizes_weights(self) -> bool:
        return self.weights == "binary"

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return RSign(layer.num_input_channels)

    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module | None:
        return ClippedSTESign() if self.binarizes_weights else None

    def build_scale(self, layer: BinaryLayer) -> Scale | None:
        return MeanAbsScale(straight_through=True) if self.binarizes_weights else None

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return react_param_groups(model)
