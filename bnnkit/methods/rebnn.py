"""``rebnn``: ReBNN, "Resilient Binary Neural Network" (Xu et al., AAAI 2023).

A learned per-channel scale α and a reconstruction term
:math:`L_R = \\sum_i \\frac{\\gamma_i}{2}\\lVert w_i - \\alpha_i b_i\\rVert^2` weighted by a balanced
parameter γ computed from the sign-flip proportion and the largest gradient (Eq. 3.150).
As in the paper and the released code, :math:`L_R` acts through the gradients of w and α
(injected in ``before_optimizer_step``), never through the loss value; it is logged as
``rebnn/recon_loss``. See methods.md §3 and traps 1-3. The sign flips come from the layer's
shared :class:`~bnnkit.nn.SignHistory`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.distributed as td
from torch import Tensor, nn

from bnnkit.binarize import ClippedSTESign, IdentitySTESign, LearnableScale, Scale
from bnnkit.methods.base import Method, TrainState, check_choice, check_range, register_method
from bnnkit.nn import BinaryLayer, LayerList, RSign

GAMMA_MODES = ("paper", "max", "constant", "fixed")
CODE_GAMMA = 2e-4  # what the released code's round_pass returns for every input
CODE_BIN = 0.02  # the released code's constant "bin": effective alpha = 0.02 |alpha_raw|
METRIC_RECON_LOSS = "rebnn/recon_loss"
METRIC_GAMMA = "rebnn/gamma"


class ReBNNState(nn.Module):
    """Per-layer ReBNN buffers.

    ``gamma``: γ per output channel; ``grad_max``: :math:`\\max_j |\\partial L/\\partial \\hat w_{ij}|`
    of the current step, recorded during backward (``grad_hat`` accumulates the step's
    :math:`\\partial L/\\partial \\hat w` over its backward passes). The signs of the previous
    iteration (:math:`b^t`) are the layer's :class:`~bnnkit.nn.SignHistory`.
    """

    def __init__(self, weight: Tensor, gamma0: float) -> None:
        super().__init__()
        w = weight.detach()
        c = w.shape[0]
        self.register_buffer("gamma", torch.full((c,), gamma0, dtype=w.dtype, device=w.device))
        self.register_buffer("grad_max", torch.zeros(c, dtype=w.dtype, device=w.device))
        self.register_buffer("grad_hat", torch.zeros_like(w), persistent=False)
        self.register_buffer(
            "recon_loss", torch.zeros((), dtype=w.dtype, device=w.device), persistent=False
        )
        # the sign history's update count at this step's before hook (None before the first)
        self.history_seen: int | None = None


class _OfficialReBNNWeight(torch.autograd.Function):
    """The released code's ``BiConv`` backward (task part): ŵ = 0.02|α| b,
    ∂/∂b = |α| g (not 0.02|α|), ∂/∂α = sign(α) Σ g ⊙ w (latent w, not b)."""

    @staticmethod
    def forward(ctx, b: Tensor, w: Tensor, alpha: Tensor) -> Tensor:
        ctx.save_for_backward(w, alpha)
        return CODE_BIN * alpha.abs().view(-1, *([1] * (b.ndim - 1))) * b

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, Tensor]:
        w, alpha = ctx.saved_tensors
        shape = (-1, *([1] * (g.ndim - 1)))
        grad_alpha = torch.sign(alpha) * (g * w).flatten(1).sum(1)
        return alpha.abs().view(shape) * g, None, grad_alpha


class OfficialReBNNScale(Scale):
    """Released-code scale: Parameter ``alpha`` (randn init), effective 0.02|alpha|."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.randn(num_channels))

    def forward(self, weight: Tensor) -> Tensor:
        return CODE_BIN * self.alpha.abs().view(-1, *([1] * (weight.ndim - 1)))

    def scale_weight(self, binary: Tensor, weight: Tensor) -> Tensor:
        return _OfficialReBNNWeight.apply(binary, weight.detach(), self.alpha)


class GradRecordingScale(Scale):
    """Wraps a scale (or none) and records :math:`\\partial L / \\partial \\hat w` of the
    binarized weight into the layer's :class:`ReBNNState` during backward (a tensor hook)."""

    def __init__(self, inner: Scale | None, state: ReBNNState) -> None:
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_state", state)  # a reference, not a second registration

    @property
    def alpha(self) -> nn.Parameter:
        """The wrapped scale's learnable ``alpha``."""
        if self.inner is None:
            raise AttributeError("this ReBNN layer has no learnable scale")
        return self.inner.alpha

    def forward(self, weight: Tensor) -> Tensor:
        if self.inner is None:
            return torch.ones(
                (weight.shape[0],) + (1,) * (weight.ndim - 1),
                dtype=weight.dtype,
                device=weight.device,
            )
        return self.inner(weight)

    def scale_weight(self, binary: Tensor, weight: Tensor) -> Tensor:
        out = binary if self.inner is None else self.inner.scale_weight(binary, weight)
        if out.requires_grad:
            out.register_hook(self._record)
        return out

    def _record(self, g: Tensor) -> None:
        # Accumulated over the backward passes of a step (gradient accumulation, a layer
        # used twice); ReBNN.after_optimizer_step resets it.
        st = self._state
        st.grad_hat.add_(g.detach())
        st.grad_max.copy_(st.grad_hat.abs().flatten(1).amax(1))


@register_method
@dataclass(frozen=True)
class ReBNN(Method):
    r"""ReBNN (Xu et al., AAAI 2023).

    Forward :math:`\hat w_i = \alpha_i b_i`, :math:`b = \mathrm{sign}(w)`; inputs RSign.
    ``variant="paper"`` (default): α learnable, initialised to mean|w_i| (the CAM value);
    task gradient by the chain rule with the clipped STE, :math:`\alpha_i (\partial L/\partial
    \hat w_i \odot 1_{|w|\le1})` (Eq. 3.141); reconstruction gradients (Eq. 3.144, 3.151-3.152)
    :math:`\delta w_i \mathrel{+}= \gamma_i (w_i - \alpha_i b_i)`,
    :math:`\delta \alpha_i \mathrel{+}= -\gamma_i \sum_j (w_{ij} - \alpha_i b_{ij}) b_{ij}`.
    ``variant="official_code"`` reproduces the released code for comparisons: effective
    :math:`\alpha = 0.02|\alpha_{raw}|` (randn init), task gradient :math:`|\alpha_{raw}| g`
    without the mask, :math:`\partial/\partial\alpha_{raw} = \mathrm{sign}(\alpha_{raw})\sum g \odot w`,
    and the reconstruction terms with 0.02|α_raw| (also without the mask).

    γ per output channel, after every optimizer step (``gamma_mode``):

    * ``paper`` (Eq. 3.150): :math:`\gamma_i^{t+1} = \frac1M \lVert b_i^t \odot b_i^{t+1} - 1
      \rVert_0 \cdot \max_j |\partial L/\partial \hat w_{ij}^t|`: the fraction of channel i's
      weights whose sign changed in the step, times the step's largest gradient. Starts at 0.
    * ``max``: the max term only. ``constant``: 2e-4, what the released code effectively uses
      (its ``round_pass`` returns 2e-4 for every input). ``fixed``: the field ``gamma``.

    The previous signs are the layer's shared sign history (never ``w - w.grad``); under DDP
    :math:`\partial L/\partial \hat w` is averaged across processes before its max is taken,
    so γ is the same on every rank.

    Composed on a base (``{name: rebnn, base: bireal}``), the base's binarizers and scale are
    used with the reconstruction term on top (``r = w - binarized_weight``; α gets its term
    when the scale is learnable), and the flips are those of the base's sign (its
    :meth:`~bnnkit.binarize.Binarizer.sign_input`). Meaningful with ``reactnet`` (ReBNN's own
    base) and ``bireal``. The ``official_code`` variant cannot sit on a base (own scale).

    Args:
        gamma_mode: see above.
        gamma: γ for ``gamma_mode="fixed"``.
        variant: ``paper`` or ``official_code``.

    Departures: γ starts at 0 in the ``paper``/``max`` modes (the paper does not say); the
    ``official_code`` variant keeps the code's gradients but uses the record of previous signs
    instead of its ``w - w.grad`` proxy.
    """

    name: ClassVar[str] = "rebnn"
    adds_rules: ClassVar[bool] = True
    gamma_mode: str = "paper"
    gamma: float = CODE_GAMMA
    variant: str = "paper"

    def __post_init__(self) -> None:
        check_choice(self, "gamma_mode", GAMMA_MODES)
        check_choice(self, "variant", ("paper", "official_code"))
        check_range(self, "gamma", low=0.0)

    def refuses_base(self, base: Method) -> str | None:
        if self.variant == "official_code":
            return "rebnn's official_code variant has its own scale and gradients; use variant: paper on a base"
        if not base.symmetric_weight_set:
            return (f"{base.name}'s weight sets are affine (a centre and a distance that are "
                    "statistics of W), and rebnn's reconstruction w - alpha*b and its gamma rule "
                    "assume a symmetric +-alpha set with a scale of their own")  # fmt: skip
        return super().refuses_base(base)

    def _gamma0(self) -> float:
        return {"constant": CODE_GAMMA, "fixed": self.gamma}.get(self.gamma_mode, 0.0)

    # -- builders (binarizers and scale used when ReBNN is not on a base) -------------------------
    def build_layer_state(self, layer: BinaryLayer) -> nn.Module:
        return ReBNNState(layer.weight, self._gamma0())

    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module | None:
        return IdentitySTESign() if self.variant == "official_code" else ClippedSTESign()

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module | None:
        return RSign(layer.num_input_channels)

    def build_scale(self, layer: BinaryLayer) -> Scale:
        if self.variant == "official_code":
            inner = OfficialReBNNScale(layer.num_output_channels)
        else:
            inner = LearnableScale(layer.num_output_channels, init="mean_abs", weight=layer.weight)
        return self.wrap_scale(layer, inner)

    def wrap_scale(self, layer: BinaryLayer, scale: Scale | None) -> Scale:
        """Records :math:`\\partial L/\\partial \\hat w` into this layer's :class:`ReBNNState`."""
        return GradRecordingScale(scale, self.state_of(layer))

    # -- hooks -----------------------------------------------------------------------------------
    def before_optimizer_step(self, layers: LayerList, state: TrainState) -> None:
        for layer, st, history in self.tracked(layers, ReBNNState):
            st.history_seen = history.updates  # the after hook needs an update after the step
            if layer.weight.grad is not None:
                self._reconstruct(layer, st)

    def _reconstruct(self, layer: BinaryLayer, st: ReBNNState) -> None:
        w = layer.weight.detach()
        shape = (-1, *([1] * (w.ndim - 1)))
        if td.is_available() and td.is_initialized() and td.get_world_size() > 1:
            td.all_reduce(st.grad_hat)  # the global dL/dŵ is the mean of the ranks' ones
            st.grad_hat.div_(td.get_world_size())
            st.grad_max.copy_(st.grad_hat.abs().flatten(1).amax(1))
        gamma = st.gamma.view(shape)
        inner = layer.scale.inner if isinstance(layer.scale, GradRecordingScale) else layer.scale
        with torch.no_grad():
            b = layer.weight_binarizer(w) if layer.weight_binarizer is not None else w
            if isinstance(inner, OfficialReBNNScale):
                r = w - CODE_BIN * inner.alpha.abs().view(shape) * b
                d_alpha = torch.sign(inner.alpha) * -(
                    st.gamma * (r * CODE_BIN * b).flatten(1).sum(1)
                )
            else:
                r = w - (inner.scale_weight(b, w) if inner is not None else b)
                d_alpha = -(st.gamma * (r * b).flatten(1).sum(1))
            layer.weight.grad.add_(gamma * r)
            alpha = inner.alpha if isinstance(inner, (LearnableScale, OfficialReBNNScale)) else None
            if alpha is not None:
                if alpha.grad is None:
                    alpha.grad = torch.zeros_like(alpha)
                alpha.grad.add_(d_alpha.to(alpha.dtype))
            st.recon_loss.copy_((st.gamma * r.square().flatten(1).sum(1)).sum() / 2)

    def after_optimizer_step(self, layers: LayerList, state: TrainState) -> dict[str, Tensor]:
        found = self.tracked(layers, ReBNNState)
        for _, st, history in found:
            history.checked(st.history_seen, "rebnn")  # updated after this step's optimizer step
            if self.gamma_mode == "paper":  # the fraction of channel i's weights that flipped
                flips = history.flipped.to(st.gamma.dtype).flatten(1).mean(1)
                st.gamma.copy_(flips * st.grad_max)
            elif self.gamma_mode == "max":
                st.gamma.copy_(st.grad_max)
            st.grad_hat.zero_()  # the next step accumulates afresh
        if not found:
            return {}
        return {
            METRIC_RECON_LOSS: torch.stack([st.recon_loss for _, st, _ in found]).sum(),
            METRIC_GAMMA: torch.cat([st.gamma for _, st, _ in found]).mean(),
        }
