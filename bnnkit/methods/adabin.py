"""``adabin``: AdaBin, "Improving Binary Neural Networks with Adaptive Binary Sets" (Tu et al.,
ECCV 2022).

From the official code (huawei-noah/Efficient-Computing 225ddd2, ``BinaryNetworks/AdaBin``; the
numerical spec with its provenance is ``docs/specs/adabin.md``). Every binary layer has its own
binary sets: for the weights, per output channel, {β_w − α_w, β_w + α_w} with centre β_w the
channel mean and distance α_w the channel's population std (statistics of W, recomputed every
forward, differentiable); for the inputs, per layer, {α_a(β_a − 1), α_a(β_a + 1)} with two
learnable scalars. The network's nonlinearity is Maxout (:class:`bnnkit.nn.Maxout`), which the
models' ``variant="adabin"`` place (models say where, methods say how).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from bnnkit.binarize import (
    Binarizer,
    EDESign,
    Scale,
    approx_sign,
    ede_sign,
    register_binarizer,
    standardize,
)
from bnnkit.errors import ConfigError
from bnnkit.methods.base import (
    Method,
    TrainState,
    check_choice,
    check_ordered,
    check_range,
    layers_with,
    register_method,
)
from bnnkit.methods.irnet import ede_schedule
from bnnkit.nn import BinaryConv2d, BinaryLayer, LayerList

METRIC_T = "adabin/t"
METRIC_ALPHA_A = "adabin/alpha_a_mean"
METRIC_BETA_A = "adabin/beta_a_mean"
METRIC_OFFSET = "adabin/beta_w_over_alpha_w"

_FIXED_T, _FIXED_K = 0.1, 10.0  # the code's constants when training is not progressive

_NOT_PACKABLE = (
    "AdaBin's binary sets {c - d, c + d} are affine: the packed format has no input-sign window "
    "sum (c_w d_a sum s_a) and no border-dependent constant (docs/specs/adabin.md section 7)"
)


def centre_distance(weight: Tensor) -> tuple[Tensor, Tensor]:
    r"""AdaBin's weight set per output channel (dim 0): centre :math:`\beta_w = \mathrm{mean}(W_c)`
    and distance :math:`\alpha_w = \sqrt{\mathrm{mean}((W_c - \beta_w)^2)}` (population std, no
    epsilon), both shaped ``(O, 1, ...)`` and differentiable."""
    dims = tuple(range(1, weight.ndim))
    centre = weight.mean(dim=dims, keepdim=True)
    distance = (weight - centre).square().mean(dim=dims, keepdim=True).sqrt()
    return centre, distance


class AdaBinWeightSign(EDESign):
    r"""AdaBin's weight sign: :math:`\mathrm{sign}(\hat w)` with
    :math:`\hat w = (W - \beta_w)/\alpha_w` per output channel (:func:`centre_distance`),
    backward IR-Net's EDE :math:`k t (1 - \tanh^2(t \hat w))`, then autograd through the
    standardisation (the statistics are not detached). ``t`` and ``k`` are the 0-d buffers of
    :class:`~bnnkit.binarize.EDESign`, written once per epoch by :class:`AdaBin`.

    The statistics run over all non-output dims of the weight (the code divides by
    ``in_channels * k * k``, wrong by the group count for grouped convs; no AdaBin model has
    any). sign(0) = +1, where the code's ``torch.sign`` gives a third value β_w.
    """

    def forward(self, x: Tensor) -> Tensor:
        return ede_sign(standardize(x, unbiased=False), self.t.to(x.dtype), self.k.to(x.dtype))

    @torch.no_grad()
    def sign_input(self, x: Tensor) -> Tensor:
        r""":math:`\hat w`: its sign is that of :math:`W - \beta_w`, so a weight can flip when
        the channel mean moves past it."""
        return standardize(x, unbiased=False)

    def inference_shift(self) -> Tensor | None:
        raise NotImplementedError("AdaBinWeightSign standardises weights: a weight binarizer only")


class AdaBinAffineScale(Scale):
    r"""AdaBin's weight set as a scale: ``scale_weight(b, W)`` :math:`= \alpha_w b + \beta_w`,
    an affine (not a multiplicative) map; ``forward(W)`` is the distance :math:`\alpha_w`,
    :meth:`offset` the centre :math:`\beta_w`. Both are recomputed from W, with gradients."""

    def forward(self, weight: Tensor) -> Tensor:
        return centre_distance(weight)[1]

    def offset(self, weight: Tensor) -> Tensor:
        """The centre :math:`\\beta_w`, shaped ``(O, 1, ...)``."""
        return centre_distance(weight)[0]

    def scale_weight(self, binary: Tensor, weight: Tensor) -> Tensor:
        centre, distance = centre_distance(weight)
        return distance * binary + centre


@register_binarizer("adabin_activation")
class AdaBinActivation(Binarizer):
    r"""AdaBin's input binarizer with learnable 0-d ``alpha`` (init 1) and ``beta`` (init 0):

    :math:`a_b = \alpha\,(\mathrm{sign}((x - \beta)/\alpha) + \beta)`, the set
    :math:`\{\alpha(\beta - 1), \alpha(\beta + 1)\}` (centre :math:`\alpha\beta`, as the code
    computes it; the paper's figure reads as centre :math:`\beta`), threshold at :math:`\beta`.
    The sign's surrogate is Bi-Real's ApproxSign on :math:`(x - \beta)/\alpha`, so
    :math:`\partial a_b/\partial x = \max(0, 2 - 2|x'|)`; autograd gives
    :math:`\partial/\partial\beta = \alpha - F'(x')` (a dense term) and
    :math:`\partial/\partial\alpha = s + \beta - x' F'(x')`. At init it is Bi-Real's sign.
    Train and eval are the same function. sign(0) = +1 (the code's 0 gives the centre).
    """

    affine_output = True

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.beta = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: Tensor) -> Tensor:
        alpha, beta = self.alpha.to(x.dtype), self.beta.to(x.dtype)
        return alpha * (approx_sign((x - beta) / alpha) + beta)

    @torch.no_grad()
    def sign_input(self, x: Tensor) -> Tensor:
        """:math:`(x - \\beta)/\\alpha`, whose sign the set's member is."""
        return (x - self.beta.to(x.dtype)) / self.alpha.to(x.dtype)

    def inference_shift(self) -> Tensor | None:
        raise NotImplementedError(_NOT_PACKABLE)


@register_method
@dataclass(frozen=True)
class AdaBin(Method):
    r"""AdaBin (Tu et al., ECCV 2022), as in the official code.

    Weights (``weights: binary``): :math:`W_b = \alpha_w\,\mathrm{sign}(\hat w) + \beta_w` per
    output channel (:class:`AdaBinWeightSign`, :class:`AdaBinAffineScale`), EDE backward with
    IR-Net's per-epoch t/k schedule (``progressive``; the code's CIFAR ``--progressive`` and its
    ImageNet script), gradients through the statistics. Inputs: :class:`AdaBinActivation`.
    ``weights: float`` is W32A1 (step 1 of a two-step recipe). Use a model's
    ``variant: adabin`` for the Maxout network of the code.

    Args:
        t_min, t_max: the EDE schedule's :math:`T_{min}` = 1e-3 and :math:`T_{max}` = 10.
        progressive: False keeps the code's non-progressive constants t = 0.1, k = 10.
        weights: ``"binary"`` (W1A1) or ``"float"`` (W32A1).

    Metrics: ``adabin/t``, the mean of the layers' ``alpha`` and ``beta``, and the mean over
    channels of :math:`|\beta_w|/\alpha_w` (how far the weight sets are from symmetric ±α,
    i.e. what a ±1 export would lose).

    Departures: sign(0) = +1 (the code's third value at exact ties); the statistics use the
    weight's real slice size (the code's ``in_channels·k·k`` divisor); ``pad_value`` ±1 is
    refused (the code zero-pads, and ±1 is not a member of the input set). Export refuses
    AdaBin layers (see :data:`_NOT_PACKABLE`). Refused as a base of rebnn (its reconstruction
    assumes a symmetric ±α set); ovsw on adabin is allowed (not a published combination).
    """

    name: ClassVar[str] = "adabin"
    t_min: float = 1e-3
    t_max: float = 10.0
    progressive: bool = True
    weights: str = "binary"

    def __post_init__(self) -> None:
        check_range(self, "t_min", low=0.0, low_inclusive=False)
        check_range(self, "t_max", low=0.0, low_inclusive=False)
        check_ordered(self, "t_min", "t_max")
        check_choice(self, "weights", ("binary", "float"))
        check_choice(self, "progressive", (True, False))

    @property
    def binarizes_weights(self) -> bool:
        return self.weights == "binary"

    @property
    def symmetric_weight_set(self) -> bool:
        return False

    def _initial(self) -> tuple[float, float]:
        if not self.progressive:
            return _FIXED_T, _FIXED_K
        return ede_schedule(0, 1, self.t_min, self.t_max)

    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module | None:
        return AdaBinWeightSign(*self._initial()) if self.binarizes_weights else None

    def build_scale(self, layer: BinaryLayer) -> Scale | None:
        return AdaBinAffineScale() if self.binarizes_weights else None

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module:
        if isinstance(layer, BinaryConv2d) and layer.pad_value != 0:
            raise ConfigError(
                "cannot be used with adabin: its input set {alpha(beta - 1), alpha(beta + 1)} "
                "is affine, the code zero-pads, and +-1 is not a member of the set",
                location=("pad_value",), value=layer.pad_value, allowed="0",
            )  # fmt: skip
        return AdaBinActivation()

    def on_step_start(self, layers: LayerList, state: TrainState) -> None:
        if not self.progressive:
            return
        t, k = ede_schedule(state.epoch, state.epochs, self.t_min, self.t_max)
        for _, layer in layers:
            if isinstance(layer.weight_binarizer, AdaBinWeightSign):
                layer.weight_binarizer.t.fill_(t)
                layer.weight_binarizer.k.fill_(k)

    @torch.no_grad()
    def after_optimizer_step(self, layers: LayerList, state: TrainState) -> dict[str, Tensor]:
        """``adabin/*`` metrics as 0-d tensors (no host sync)."""
        found = [m for m, _ in layers_with(layers, AdaBinActivation, "input_binarizer")]
        if not found:
            return {}
        acts = [m.input_binarizer for m in found]
        out = {
            METRIC_ALPHA_A: torch.stack([a.alpha.detach().float() for a in acts]).mean(),
            METRIC_BETA_A: torch.stack([a.beta.detach().float() for a in acts]).mean(),
        }
        signs = [m for m in found if isinstance(m.weight_binarizer, AdaBinWeightSign)]
        if signs:
            out[METRIC_T] = signs[0].weight_binarizer.t.detach().float().clone()
            ratios = []
            for m in signs:
                centre, distance = centre_distance(m.weight.detach().float())
                ratios.append((centre.abs() / distance).flatten())
            out[METRIC_OFFSET] = torch.cat(ratios).mean()
        return out
