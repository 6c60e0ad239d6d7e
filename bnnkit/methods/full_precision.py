"""``float``: the W32A32 reference (binary layers compute exactly the float layer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bnnkit.methods.base import Method, register_method


@register_method
@dataclass(frozen=True)
class FullPrecision(Method):
    r"""Full precision: no binarizer, no scale; :math:`y = W * x` with ordinary gradients.

    The reference every binary method is compared with, on the same architecture (the
    binary layers stay ``BinaryConv2d`` / ``BinaryLinear`` but compute what ``nn.Conv2d`` /
    ``nn.Linear`` compute).
    """

    name: ClassVar[str] = "float"

    @property
    def binarizes_weights(self) -> bool:
        return False
