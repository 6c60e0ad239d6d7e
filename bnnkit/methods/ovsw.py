"""``ovsw``: OvSW, "Overcoming Silent Weights for Accurate Binary Neural Networks" (Xiang et al.,
ECCV 2024).

From the official code (methods.md §4): sign of the raw weight with the identity STE, a
no-grad scale mean|standardised W|, inputs divided by their (detached) per-sample std, and
two gradient rules applied after AMP unscale and before the optimizer step: Adaptive Gradient
Scaling (AGS) and Silence Awareness Decaying (SAD). SAD's sign changes are read from the
layer's shared :class:`~bnnkit.nn.SignHistory` (the official code keeps a float copy of W for
them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from bnnkit.binarize import (
    IdentitySTESign,
    LearnableScale,
    Scale,
    StdNormApproxSign,
    channel_mean_abs,
    standardize,
)
from bnnkit.methods.base import Method, TrainState, check_range, register_method
from bnnkit.nn import BinaryLayer, LayerList

METRIC_SILENT = "ovsw/silent"
METRIC_AGS_RATIO = "ovsw/ags_ratio"


class StandardizedMeanAbsScale(Scale):
    r"""OvSW's scale :math:`s_c = \mathrm{mean}|(W_c - \mu_c) / \sqrt{\sigma_c^2 + 10^{-5}}|`,
    no gradient (unbiased variance). About √(2/π) ≈ 0.8 for Gaussian weights."""

    def forward(self, weight: Tensor) -> Tensor:
        with torch.no_grad():
            return channel_mean_abs(standardize(weight, eps=1e-5, unbiased=True))


class SADState(nn.Module):
    """Per-layer OvSW buffers: ``tracker`` (EMA of sign changes, init 0, or 1 with
    ``track_ones``), plus the last step's ``silent`` fraction and mean AGS ratio (0-d, for
    metrics). The previous signs are the layer's :class:`~bnnkit.nn.SignHistory`."""

    def __init__(self, weight: Tensor, track_ones: bool = False) -> None:
        super().__init__()
        w = weight.detach()
        self.register_buffer("tracker", torch.ones_like(w) if track_ones else torch.zeros_like(w))
        self.register_buffer("silent_fraction", torch.ones((), dtype=w.dtype), persistent=False)
        self.register_buffer("ags_ratio", torch.zeros((), dtype=w.dtype), persistent=False)
        self.history_seen: int | None = None  # the sign-history update count read last


def ags_(grad: Tensor, weight: Tensor, delta: float) -> Tensor:
    r"""Adaptive Gradient Scaling, in place on ``grad``; returns the per-channel ratio r.

    Per output channel: :math:`g_n = \max(\lVert g_c\rVert_2, 10^{-6})`,
    :math:`w_n = \max(\lVert w_c\rVert_2, 10^{-3})`, :math:`r = g_n / w_n`; where
    :math:`r < \delta`, :math:`g_c \leftarrow g_c \cdot \delta w_n / g_n` (a lower bound on the
    gradient-to-weight norm ratio: gradients are only ever scaled up).
    """
    shape = (-1,) + (1,) * (grad.ndim - 1)
    gn = grad.flatten(1).norm(dim=1).clamp_min(1e-6)
    wn = weight.detach().flatten(1).norm(dim=1).clamp_min(1e-3)
    r = gn / wn
    factor = torch.where(r < delta, delta * wn / gn, torch.ones_like(r))
    grad.mul_(factor.view(shape))
    return r


def sad_(
    grad: Tensor,
    weight: Tensor,
    tracker: Tensor,
    flipped: Tensor,
    lam: float,
    m: float,
    theta: float,
) -> Tensor:
    r"""Silence Awareness Decaying, in place on ``grad`` and ``tracker``; returns the silent mask.

    :math:`T \leftarrow m T + (1 - m) 1[\mathrm{sign}(W) \ne \mathrm{sign}(W_{prev})]`,
    silent :math:`= T < \theta`, :math:`g \leftarrow g + \lambda\,\mathrm{silent} \odot W`.
    ``flipped`` is :math:`1[\mathrm{sign}(W) \ne \mathrm{sign}(W_{prev})]` with :math:`W` the
    pre-step weights and :math:`W_{prev}` those of the step before (the sign history's flips
    of the last update; none at the first step).
    """
    tracker.mul_(m).add_(flipped.to(tracker.dtype), alpha=1.0 - m)
    silent = tracker < theta
    grad.add_(silent.to(grad.dtype) * weight.detach(), alpha=lam)
    return silent


@register_method
@dataclass(frozen=True)
class OvSW(Method):
    r"""OvSW (Xiang et al., ECCV 2024), as in the official code.

    Forward: :math:`s_c\,\mathrm{sign}(W) * \mathrm{sign}(\hat a)`, identity STE for W,
    ApproxSign on :math:`\hat a = a / \mathrm{std}(a)` (detached std, training only).
    ``before_optimizer_step``: :func:`ags_` then :func:`sad_` on every binary layer's weight
    gradient (the engine calls it after AMP unscale, so the rules see true gradients; the SAD
    term then goes through momentum, on top of the optimizer's own weight decay).

    Composed on a base (``{name: ovsw, base: recu}``), the base's binarizers, scale and
    schedule are used with OvSW's rules on top; the sign SAD tracks is then the base's
    (ReCU's: the channel-centred weight's). Meaningful with methods whose weight gradient is
    dense: ``recu``, ``reactnet``, ``bireal``, ``ste``, ``xnor``.

    Args:
        delta: AGS lower bound δ on ‖g‖/‖w‖ (ImageNet 0.01; CIFAR sweep 0.04).
        lam: SAD extra decay λ on silent weights (ImageNet 2e-5; CIFAR sweep 9e-4).
        m: tracker momentum (0.999).
        theta: silence threshold θ on the tracker (1e-4).
        learnable_scale: a learnable per-channel scale initialised to mean|W| (the code's
            ``--scaling_factor True``) instead of the no-grad standardised mean.
        input_bias: learnable shift before the input normalisation (two-step variants).
        track_ones: start the tracker at 1 (nothing silent at first) instead of 0.

    Departures: sign(0) = +1 in the flip test (the code's torch.sign gives 0); the previous
    signs come from the shared sign history (1 byte per weight) instead of a float copy of W.
    """

    name: ClassVar[str] = "ovsw"
    delta: float = 0.01
    lam: float = 2e-5
    m: float = 0.999
    theta: float = 1e-4
    learnable_scale: bool = False
    input_bias: bool = False
    track_ones: bool = False
    adds_rules: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_range(self, "delta", low=0.0)
        check_range(self, "lam", low=0.0)
        check_range(self, "m", low=0.0, high=1.0, high_inclusive=False)
        check_range(self, "theta", low=0.0)

    # -- binarizers (used when OvSW is not on a base) ----------------------------------------------
    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module | None:
        return IdentitySTESign()

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module | None:
        channels = layer.num_input_channels if self.input_bias else None
        return StdNormApproxSign(detach_std=True, num_channels=channels)

    def build_scale(self, layer: BinaryLayer) -> Scale | None:
        if self.learnable_scale:
            return LearnableScale(layer.num_output_channels, init="mean_abs", weight=layer.weight)
        return StandardizedMeanAbsScale()

    def build_layer_state(self, layer: BinaryLayer) -> nn.Module:
        return SADState(layer.weight, self.track_ones)

    # -- hooks -----------------------------------------------------------------------------------
    def before_optimizer_step(self, layers: LayerList, state: TrainState) -> None:
        for layer, st, history in self.tracked(layers, SADState):
            grad = layer.weight.grad
            if grad is None:
                continue
            st.history_seen = history.checked(st.history_seen, "ovsw")
            r = ags_(grad, layer.weight, self.delta)
            silent = sad_(
                grad, layer.weight, st.tracker, history.flipped, self.lam, self.m, self.theta
            )
            st.ags_ratio.copy_(r.mean())
            st.silent_fraction.copy_(silent.to(st.silent_fraction.dtype).mean())

    def after_optimizer_step(self, layers: LayerList, state: TrainState) -> dict[str, Tensor]:
        found = self.tracked(layers, SADState)
        if not found:
            return {}
        total = sum(layer.weight.numel() for layer, _, _ in found)
        # mean r over the channels of all layers (each layer's mean weighted by its channels)
        channels = sum(layer.weight.shape[0] for layer, _, _ in found)
        return {
            METRIC_SILENT: sum(layer.weight.numel() * st.silent_fraction for layer, st, _ in found)
            / total,
            METRIC_AGS_RATIO: sum(layer.weight.shape[0] * st.ags_ratio for layer, st, _ in found)
            / channels,
        }
