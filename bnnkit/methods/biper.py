"""``biper``: BiPer, "Binary Neural Networks using a Periodic Function" (Vargas et al., CVPR 2024).

Implemented from the official code (edmav4/BiPer 0c07fdd, on the ReCU code base; the numerical
spec with its provenance is ``docs/specs/biper.md``). Relative to ReCU: the weight path loses
the standardisation and the clamp and becomes a square wave of the raw latent weight; the
activations, the learnable scale and the recipe settings stay ReCU's; ReCU's τ becomes the
weight of a sin² regulariser (CIFAR only); training has two stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from bnnkit.binarize import LearnableScale, PeriodicSign, Scale, SineWeight, StdNormApproxSign
from bnnkit.methods.base import Method, check_choice, check_range, layers_with, register_method
from bnnkit.nn import BinaryLayer, LayerList

LOSS_SIN2 = "biper/sin2"
METRIC_QE = "biper/qe"
METRIC_WRAPPED = "biper/wrapped"


@register_method
@dataclass(frozen=True)
class BiPer(Method):
    r"""BiPer (Vargas et al., CVPR 2024), as in the official code.

    Weights, stage 2 (``weights: binary``): :math:`b = \mathrm{sign}(\sin(\omega W))`, a square
    wave of the raw latent weight with period :math:`2\pi/\omega` (no centring, no
    standardisation, no clamp), backward :math:`\partial b/\partial W := \omega\cos(\omega W)`
    (:class:`~bnnkit.binarize.PeriodicSign`). Stage 1 (``weights: sine``): the real-valued
    :math:`\sin(\omega W)` with the same gradient (:class:`~bnnkit.binarize.SineWeight`; the
    layer is W32A1, not exported). Inputs: ReCU's per-sample std normalisation in training, sign,
    ApproxSign through the std (:class:`~bnnkit.binarize.StdNormApproxSign`, std not detached).
    Scale: a learnable per-channel α, U[0, 1) init, weight-decayed by the recipe's rule; stage 2
    starts from stage 1's α (the two-stage recipe's weight transfer). Extra loss (``reg`` > 0):
    :math:`\tau \sum_l \mathrm{mean}(\sin^2(\omega W_l))`, a sum of per-layer means, logged as
    ``biper/sin2``.

    Args:
        omega: the frequency ω, one fixed value for every layer (20 in every released script;
            the code's default 30).
        weights: ``"sine"`` (stage 1) or ``"binary"`` (stage 2).
        reg: τ, the weight of the sin² regulariser (CIFAR ResNet-18: 0.037 in stage 1,
            0.0468 in stage 2; 0 on ImageNet, where the code comments the term out).

    Metrics: ``biper/qe`` the code's quantization error :math:`1 - |\sin(\omega W)|`, here a
    mean over all binary weights (the code sums per-layer means); ``biper/wrapped`` the fraction
    of weights whose binary value differs from sign(W) (beyond the first half-period).

    Departures: sign(0) = +1 (torch.sign's 0 in the code); the regulariser is not added to the
    validation loss (the code logs it there too); ω is part of the method's config, so
    evaluation uses the trained ω (the official eval scripts silently run at the default 30).
    Refused as a base of ovsw / rebnn: their rules act through |w|, which a periodic sign makes
    meaningless (:attr:`monotone_weight_sign` is False).
    """

    name: ClassVar[str] = "biper"
    omega: float = 20.0
    weights: str = "binary"
    reg: float = 0.0

    def __post_init__(self) -> None:
        check_range(self, "omega", low=0.0, low_inclusive=False)
        check_choice(self, "weights", ("binary", "sine"))
        check_range(self, "reg", low=0.0)

    @property
    def binarizes_weights(self) -> bool:
        return self.weights == "binary"

    @property
    def monotone_weight_sign(self) -> bool:
        return False

    @property
    def weight_sign_kind(self) -> str:
        return "periodic in w (sign(sin(omega w)))"

    def refuses_previous(self, previous: Method) -> str | None:
        """Stage 2 must keep stage 1's ω: its latent weights are phases of that frequency."""
        before = [p for p in previous.parts() if isinstance(p, BiPer)]
        if before and before[0].omega != self.omega:
            return (f"biper's omega = {self.omega:g} differs from the previous stage's "
                    f"{before[0].omega:g}; the weights it starts from are phases of that "
                    "frequency: use the same omega in both stages")  # fmt: skip
        return None

    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return PeriodicSign(self.omega) if self.binarizes_weights else SineWeight(self.omega)

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return StdNormApproxSign(detach_std=False)

    def build_scale(self, layer: BinaryLayer) -> Scale:
        return LearnableScale(layer.num_output_channels, init="uniform", weight=layer.weight)

    def extra_losses(
        self, layers: LayerList, outputs: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        """``biper/sin2``: τ · Σ over the layers of mean(sin²(ω W)) (each layer counts once)."""
        if self.reg == 0.0:
            return {}
        terms = [
            torch.sin(b.omega * m.weight.float()).square().mean()
            for m, b in layers_with(layers, PeriodicSign)
        ]
        if not terms:
            return {}
        return {LOSS_SIN2: self.reg * torch.stack(terms).sum()}

    @torch.no_grad()
    def after_optimizer_step(self, layers: LayerList, state: object) -> dict[str, Tensor]:
        """``biper/qe`` and ``biper/wrapped`` over all binary weights (0-d tensors, no sync)."""
        pairs = layers_with(layers, PeriodicSign)
        if not pairs:
            return {}
        qe, wrapped, total = 0.0, 0.0, 0
        for m, b in pairs:
            s = torch.sin(b.omega * m.weight.float())
            qe = qe + (1.0 - s.abs()).sum()
            wrapped = wrapped + ((s < 0) != (m.weight < 0)).sum()
            total += m.weight.numel()
        return {METRIC_QE: qe / total, METRIC_WRAPPED: wrapped.float() / total}
