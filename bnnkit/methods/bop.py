"""``bop``: binary layers for the Bop optimizer (Helwegen et al., NeurIPS 2019, "Latent Weights
Do Not Exist: Rethinking Binarized Neural Network Optimization"; larq's ``Bop``).

There are no latent weights: the layer's weight *is* the ±1 weight, which
:class:`~bnnkit.training.bop.Bop` flips. This method says how such layers compute; the recipe's
``optimizer.binary`` section configures Bop (spec: ``docs/specs/bop.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from bnnkit.binarize import ApproxSign, ClippedSTESign, IdentitySTESign
from bnnkit.methods.base import Method, check_choice, register_method
from bnnkit.nn import BinaryLayer


@register_method
@dataclass(frozen=True)
class BopMethod(Method):
    r"""Bop's binary layers (Helwegen et al., NeurIPS 2019), as in larq and the paper's code.

    Weights: :math:`\mathrm{sign}(W)` with the identity gradient
    (:class:`~bnnkit.binarize.IdentitySTESign`): the optimizer receives
    :math:`\partial L / \partial w_b`, the gradient with respect to the binary weight, and
    the stored weight is ±1 (Bop writes sign(W) when it is built), so the forward is the
    identity on it. Inputs: the clipped STE sign (``ste_sign``: BinaryNet, XNOR-Net topology,
    Binary AlexNet) or ApproxSign (``approx_sign``: Bi-Real Net). No scale: every published
    Bop model has batch norm after each binary layer.

    Optimizer groups: ``binary`` (every binary layer's weight; weight decay 0; optimized by
    ``optimizer.binary``, Bop) and ``all`` (everything else, the recipe's optimizer and decay
    rule): larq's ``CaseOptimizer``.

    Args:
        inputs: ``"ste_sign"`` or ``"approx_sign"``.

    Departures: sign(0) = +1; the forward is binary from the first step (the paper's code uses
    the float initialisation on its first batch); at :math:`w m = \tau` exactly the weight is
    kept (larq writes +1). Composition: bop cannot sit on a base (it says how layers binarize),
    and the rule methods refuse it as a base (:attr:`latent_free`: their rules act on latent
    magnitudes, which Bop's weights do not have).
    """

    name: ClassVar[str] = "bop"
    inputs: str = "ste_sign"

    def __post_init__(self) -> None:
        check_choice(self, "inputs", ("ste_sign", "approx_sign"))

    @property
    def latent_free(self) -> bool:
        return True

    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return IdentitySTESign()

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return ClippedSTESign() if self.inputs == "ste_sign" else ApproxSign()

    def build_scale(self, layer: BinaryLayer) -> None:
        return None

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        binary = [m.weight for m in model.modules() if isinstance(m, BinaryLayer)
                  and m.binary_weight and m.weight.requires_grad]  # fmt: skip
        ids = {id(p) for p in binary}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [
            {"name": "all", "params": rest},
            {"name": "binary", "params": binary, "weight_decay": 0.0, "optimizer": "binary"},
        ]
