"""``recu``: ReCU, "Reviving the Dead Weights in Binary Neural Networks" (Xu et al., ICCV 2021).

Implemented from the official code (methods.md §2): weight standardisation to std 2√2, a
rectified clamp at the Laplace τ-quantile Q(τ) with τ scheduled per epoch from 0.85 to 0.99,
sign with the identity STE, inputs divided by their per-sample std in training, and a
learnable per-channel scale α initialised U[0, 1) and weight-decayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from bnnkit.binarize import (
    Binarizer,
    LearnableScale,
    Scale,
    StdNormApproxSign,
    identity_ste_sign,
)
from bnnkit.methods.base import Method, TrainState, check_ordered, check_range, register_method
from bnnkit.nn import BinaryLayer, LayerList

STD_TARGET = 2.0 * math.sqrt(2.0)  # std of w1; Laplace scale b* = STD_TARGET / sqrt(2) = 2
METRIC_TAU = "recu/tau"
METRIC_CLAMPED = "recu/clamped"


def recu_tau(epoch: int, epochs: int, tau_min: float = 0.85, tau_max: float = 0.99) -> float:
    r"""ReCU's "adaptive exponential scheduler" for epoch ``epoch`` (0-based) of ``epochs``.

    :math:`\tau(e) = A e^{e/E} + B`, :math:`A = (\tau_{max} - \tau_{min}) / (\mathrm{e} - 1)`,
    :math:`B = \tau_{min} - A`. So :math:`\tau(0) = \tau_{min}` and the last epoch stays just
    below :math:`\tau_{max}` (0.9896 for E = 600), as in the official code.
    """
    a = (tau_max - tau_min) / (math.e - 1.0)
    return a * math.exp(epoch / max(epochs, 1)) + (tau_min - a)


def recu_standardize(w: Tensor) -> Tensor:
    r"""Centre per output channel and scale to std :math:`2\sqrt2` (differentiable).

    :math:`w_0 = w - \mathrm{mean}_c(w)`, :math:`w_1 = w_0 \cdot 2\sqrt2 / \sqrt{\mathrm{var}_c(w_0)
    + 10^{-5}}` with the unbiased variance; gradients flow through the mean and the variance.
    """
    dims = tuple(range(1, w.ndim))
    w0 = w - w.mean(dim=dims, keepdim=True)
    return w0 * STD_TARGET / torch.sqrt(w0.var(dim=dims, keepdim=True, unbiased=True) + 1e-5)


def recu_threshold(w1: Tensor, tau: Tensor) -> Tensor:
    r"""Laplace τ-quantile :math:`Q(\tau) = -\hat E \ln(2 - 2\tau)`, a detached 0-d tensor.

    :math:`\hat E = \mathrm{mean}|w_1|` over the **whole layer** (the Laplace MLE of the scale).
    The official code turns Q into a Python float (a host sync per forward); here it stays a
    tensor, with the same value and no gradient.
    """
    with torch.no_grad():
        return -w1.abs().mean() * torch.log(2.0 - 2.0 * tau)


class ReCUSign(Binarizer):
    r"""ReCU weight binarizer: :math:`\mathrm{sign}(\mathrm{clamp}(w_1, -Q(\tau), Q(\tau)))`.

    Backward: identity STE through the sign, gradient 1 on the closed interval
    :math:`[-Q, Q]` and 0 outside (``torch.clamp``), then through the standardisation. Tail
    ("dead") weights thus get no task gradient, only the standardisation-statistics term and
    weight decay, which pull them back. ``tau`` is a 0-d buffer written by the schedule.
    """

    tau: Tensor
    clamped: Tensor

    def __init__(self, tau: float = 0.85) -> None:
        super().__init__()
        self.register_buffer("tau", torch.tensor(float(tau)))
        # diagnostics: fraction of |w1| > Q at the last forward (not saved in checkpoints)
        self.register_buffer("clamped", torch.zeros(()), persistent=False)

    def _standardized(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """``(w1, Q)``: the standardised weight and the clamp threshold."""
        w1 = recu_standardize(w)
        return w1, recu_threshold(w1, self.tau.to(w1.dtype))

    def clamp_input(self, w: Tensor) -> Tensor:
        """``clamp(w1, -Q, Q)``: the tensor the sign is taken of."""
        w1, q = self._standardized(w)
        return torch.clamp(w1, -q, q)

    @torch.no_grad()
    def sign_input(self, x: Tensor) -> Tensor:
        """The standardised, clamped weight (its sign is that of the channel-centred weight)."""
        return self.clamp_input(x)

    def forward(self, w: Tensor) -> Tensor:
        w1, q = self._standardized(w)
        if self.training:
            with torch.no_grad():
                self.clamped.copy_((w1.abs() > q).float().mean())
        return identity_ste_sign(torch.clamp(w1, -q, q))


@register_method
@dataclass(frozen=True)
class ReCU(Method):
    r"""ReCU (Xu et al., ICCV 2021), as in the official code.

    Weights: :class:`ReCUSign` (standardise to std 2√2, clamp at ±Q(τ), sign, identity STE).
    Inputs: :class:`~bnnkit.binarize.StdNormApproxSign` with the std *not* detached. Scale:
    learnable per-channel α, U[0, 1) init (the code's ``torch.rand``, not mean|W|); it is an
    ordinary parameter, weight-decayed by the recipe's rule. τ follows :func:`recu_tau`, once
    per epoch, into the ``tau`` buffer of every layer's weight binarizer.

    Args:
        tau_min: τ at epoch 0 (0.85 in every run.sh).
        tau_max: the asymptote of the schedule (0.99).
        input_bias: add a learnable per-channel shift before the input normalisation
            (ReActNet's ``move0``, present in ReCU's two-stage ReAct-ResNet-18 code).

    Departures: sign(0) = +1 (the code's torch.sign gives 0); Q stays a device tensor (the
    code calls ``.item()``), which changes no value.
    """

    name: ClassVar[str] = "recu"
    tau_min: float = 0.85
    tau_max: float = 0.99
    input_bias: bool = False

    def __post_init__(self) -> None:
        check_range(self, "tau_min", low=0.5, high=1.0, high_inclusive=False)
        check_range(self, "tau_max", low=0.5, high=1.0, high_inclusive=False)
        check_ordered(self, "tau_min", "tau_max")

    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return ReCUSign(self.tau_min)

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module:
        channels = layer.num_input_channels if self.input_bias else None
        return StdNormApproxSign(detach_std=False, num_channels=channels)

    def build_scale(self, layer: BinaryLayer) -> Scale:
        return LearnableScale(layer.num_output_channels, init="uniform", weight=layer.weight)

    def on_step_start(self, layers: LayerList, state: TrainState) -> None:
        tau = recu_tau(state.epoch, state.epochs, self.tau_min, self.tau_max)
        for _, layer in layers:
            if isinstance(layer.weight_binarizer, ReCUSign):
                layer.weight_binarizer.tau.fill_(tau)

    def after_optimizer_step(self, layers: LayerList, state: TrainState) -> dict[str, Tensor]:
        """Method metrics: ``recu/tau`` and ``recu/clamped``, the fraction of weights beyond
        ±Q(τ) at this step's forward (all ReCU layers, weighted by size)."""
        binarizers = [
            (layer.weight.numel(), layer.weight_binarizer)
            for _, layer in layers
            if isinstance(layer.weight_binarizer, ReCUSign)
        ]
        if not binarizers:
            return {}
        total = sum(n for n, _ in binarizers)
        return {
            METRIC_TAU: binarizers[0][1].tau.clone(),
            METRIC_CLAMPED: sum(n * b.clamped for n, b in binarizers) / total,
        }
