"""``rbnn``: RBNN, "Rotated Binary Neural Network" (Lin et al., NeurIPS 2020).

From the official code (lmbxmu/RBNN 0b5e73b; the numerical spec with its provenance is
``docs/specs/rbnn.md``). Each binary layer standardises its weight per output channel, views
each channel as an a x b matrix X and rotates it by two orthogonal matrices shared by the
layer, R1^T X R2 (a Kronecker-structured rotation of the flattened channel), blends the rotated
weight with the unrotated one per channel by |sin θ| (θ learnable), and takes the sign. R1 and
R2 are refitted once per epoch, before the epoch's first forward, by alternating Procrustes
steps that bring R1^T X R2 closer to its own sign. Inputs are standardised per sample (mean
subtracted: the sign is that of x - mean(x)).
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
    rbnn_sign,
    register_binarizer,
    sign,
    standardize,
)
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
from bnnkit.nn import BinaryLayer, LayerList

METRIC_T = "rbnn/t"
METRIC_SIN_THETA = "rbnn/sin_theta"


def get_ab(n: int) -> tuple[int, int]:
    """The code's matrix shape of an n-element channel: ``a`` the largest divisor of ``n`` not
    above ``floor(sqrt(n))``, ``b = n // a`` (so ``a <= b``; ``a = 1`` for a prime ``n``)."""
    a = math.isqrt(n)
    while n % a:
        a -= 1
    return a, n // a


def haar_orthogonal(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A Haar-random n x n orthogonal matrix (QR of a Gaussian, with the signs of diag(R)
    folded into Q), from torch's RNG (the code draws from SciPy's unseeded global RNG)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    d = torch.sign(torch.diagonal(r))
    return (q * torch.where(d == 0, torch.ones_like(d), d)).float()


@torch.no_grad()
def rotation_update(x: Tensor, r1: Tensor, r2: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    r"""RBNN's alternating refit of the bi-rotation (pure; the inputs are not modified).

    With X of shape (O, a, b) fixed, ``iters`` times: :math:`B = \mathrm{sign}(R_1^T X R_2)`;
    :math:`R_1 \leftarrow` the polar factor of :math:`\sum_o X_o R_2 B_o^T` (orthogonal
    Procrustes, the code's :math:`V_1 U_1^T` of ``svd`` :math:`\sum_o B_o R_2^T X_o^T`);
    :math:`R_2 \leftarrow` the polar factor of :math:`\sum_o X_o^T R_1 B_o`. Each step
    minimises :math:`\sum_o \lVert B_o - R_1^T X_o R_2 \rVert_F^2` in its own variable, so the
    objective never increases. sign(0) = +1 (the code's torch.sign leaves a 0 in B).
    """
    r1, r2 = r1.to(x.dtype), r2.to(x.dtype)
    for _ in range(iters):
        b = sign(r1.T @ x @ r2)
        u, _, vh = torch.linalg.svd(torch.einsum("oab,ocb->ac", x @ r2, b))  # Σ X R2 B^T
        r1 = u @ vh
        u, _, vh = torch.linalg.svd(torch.einsum("oab,oad->bd", x, r1 @ b))  # Σ X^T R1 B
        r2 = u @ vh
    return r1, r2


class RBNNWeightSign(Binarizer):
    r"""RBNN's weight binarizer, which owns the layer's rotation state.

    :math:`w_2 = (W - \mu_c)/\sigma_c` per output channel (unbiased std, no epsilon,
    differentiable); :math:`X_c` = the channel's :math:`w_2` as an a x b matrix
    (:func:`get_ab`, row-major); :math:`R_w = R_1^T X R_2` (detached);
    :math:`w_3 = w_2 + |\sin\theta_c|\,(R_w - w_2)`; output :math:`\mathrm{sign}(w_3)` with
    the surrogate :func:`~bnnkit.binarize.rbnn_grad` (t, k written per epoch). So
    :math:`\partial w_3/\partial w_2 = 1 - |\sin\theta|`: at the code's θ = π/2 the latent
    weights get no task gradient and the binary weights move through θ and the refits.

    Parameters / buffers: ``theta`` (O, 1, ..., 1), ``R1`` (a, a), ``R2`` (b, b), ``t``, ``k``.
    The rotation is computed in float32 or wider, outside autocast (a bf16 product would move
    signs near 0).
    """

    t: Tensor
    k: Tensor
    R1: Tensor
    R2: Tensor

    def __init__(
        self,
        shape: tuple[int, ...] | torch.Size,
        t: float = 1.0,
        k: float = 1.0,
        theta_init: float = math.pi / 2,
    ) -> None:
        super().__init__()
        shape = tuple(shape)
        self.num_channels, self.n = shape[0], math.prod(shape[1:])
        self.a, self.b = get_ab(self.n)
        self.theta = nn.Parameter(torch.full((shape[0],) + (1,) * (len(shape) - 1), float(theta_init)))  # fmt: skip
        self.register_buffer("R1", haar_orthogonal(self.a))
        self.register_buffer("R2", haar_orthogonal(self.b))
        self.register_buffer("t", torch.tensor(float(t)))
        self.register_buffer("k", torch.tensor(float(k)))

    def _rotated(self, w2: Tensor) -> Tensor:
        with torch.no_grad(), torch.autocast(w2.device.type, enabled=False):
            dtype = torch.promote_types(w2.dtype, torch.float32)
            x = w2.detach().to(dtype).reshape(self.num_channels, self.a, self.b)
            rw = self.R1.to(dtype).T @ x @ self.R2.to(dtype)
            return rw.reshape(w2.shape).to(w2.dtype)

    def _blend(self, w: Tensor) -> Tensor:
        w2 = standardize(w, unbiased=True)
        s = torch.sin(self.theta.to(w.dtype)).abs()
        return w2 + s * (self._rotated(w2) - w2)

    def forward(self, w: Tensor) -> Tensor:
        return rbnn_sign(self._blend(w), self.t.to(w.dtype), self.k.to(w.dtype))

    @torch.no_grad()
    def sign_input(self, x: Tensor) -> Tensor:
        """:math:`w_3`, the rotated, blended, standardised weight."""
        return self._blend(x)

    @torch.no_grad()
    def refresh(self, weight: Tensor, iters: int) -> None:
        """Refit R1, R2 in place to the current latent ``weight`` (:func:`rotation_update`, in
        float64 on the weight's device)."""
        x = standardize(weight.detach().double(), unbiased=True)
        r1, r2 = rotation_update(x.reshape(self.num_channels, self.a, self.b),
                                 self.R1.double(), self.R2.double(), iters)  # fmt: skip
        self.R1.copy_(r1)
        self.R2.copy_(r2)

    def inference_shift(self) -> Tensor | None:
        raise NotImplementedError("RBNNWeightSign rotates weights: a weight binarizer only")

    def extra_repr(self) -> str:
        return f"channels={self.num_channels}, matrix={self.a}x{self.b}"


@register_binarizer("rbnn_activation")
class RBNNActSign(Binarizer):
    r"""RBNN's input binarizer: per sample (over all non-batch dims)
    :math:`x_2 = (x - \mathrm{mean}_n(x)) / \mathrm{std}_n(x)` (unbiased, no epsilon,
    differentiable), in training and eval alike; output :math:`\mathrm{sign}(x_2)` with the
    surrogate :math:`\max(0, \sqrt2 t' - t'^2|x_2|)`, :math:`t' = \max(t, 1)`, k = 1.

    The mean subtraction moves the sign (it is that of :math:`x - \mathrm{mean}_n(x)`, a
    per-sample shift), so the packed export refuses it. ``center=False`` (a departure) only
    divides by the std: the sign is that of x and the layer exports.
    """

    t: Tensor

    def __init__(self, t: float = 1.0, center: bool = True) -> None:
        super().__init__()
        self.center = bool(center)
        self.register_buffer("t", torch.tensor(float(t)))

    def _standardized(self, x: Tensor) -> Tensor:
        dims = tuple(range(1, x.ndim))
        std = x.std(dim=dims, keepdim=True)
        return (x - x.mean(dim=dims, keepdim=True)) / std if self.center else x / std

    def forward(self, x: Tensor) -> Tensor:
        # the statistics in fp32 at least (under bf16 autocast the mean would move signs)
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        t = self.t.to(wide.dtype).clamp_min(1.0)
        return rbnn_sign(self._standardized(wide), t, 1.0).to(x.dtype)

    @torch.no_grad()
    def sign_input(self, x: Tensor) -> Tensor:
        """``x - mean_n(x)`` (``x`` with ``center=False``): the std only divides."""
        return x - x.mean(dim=tuple(range(1, x.ndim)), keepdim=True) if self.center else x

    def inference_shift(self) -> Tensor | None:
        if self.center:
            raise NotImplementedError(
                "RBNN centres each input sample by its own mean over (C, H, W) before the sign "
                "(a per-sample shift); the packed path supports sign(x + b_c) only (train with "
                "rbnn's center_inputs: false to export)"
            )
        return None

    def extra_repr(self) -> str:
        return f"center={self.center}"


@register_method
@dataclass(frozen=True)
class RBNN(Method):
    r"""RBNN (Lin et al., NeurIPS 2020), as in the official code.

    Weights :math:`\alpha_c\,\mathrm{sign}(w_3)` (:class:`RBNNWeightSign`, a learnable α
    initialised to mean|W| per channel); inputs :class:`RBNNActSign`. Once per epoch the
    schedule :math:`t = 10^{\log T_{min} + (\log T_{max} - \log T_{min}) e/E}`,
    :math:`k = \max(1/t, 1)` (IR-Net's :func:`~bnnkit.methods.irnet.ede_schedule`) is written,
    and at the epoch's first step (before its forward) R1, R2 are refitted by
    ``rotation_iters`` alternating steps on the current weights, every ``rotation_every``
    epochs.

    Args:
        t_min, t_max: the schedule's bounds (1e-2 and 10 in every script).
        rotation_iters: alternating iterations per refit (3).
        rotation_every: refit at the epochs divisible by it (the code's ``--rotation_update``).
        theta_init: θ's initial value (π/2: fully rotated, as the code since May 2020).
        center_inputs: subtract each sample's mean before the sign (the code); False is a
            departure that makes the layers exportable.

    Metrics: ``rbnn/t`` and ``rbnn/sin_theta``, the mean |sin θ| over all channels (weight
    decay pulls θ towards 0, i.e. away from the rotation).

    Departures: sign(0) = +1; R1, R2 are drawn from torch's (seeded) RNG, and refitted in
    float64; α starts at mean|W| of the weight when the method is attached (the code takes it
    before the model re-initialises its convs; α is inert behind the BN that follows every
    binary conv); the refits are in-place, so they also persist under data parallelism (the
    code's assignment is lost under nn.DataParallel, probably in its 4-GPU ImageNet runs).
    Refused as a base of ovsw / rebnn (the sign of a rotated weight is not monotone in w).
    """

    name: ClassVar[str] = "rbnn"
    t_min: float = 1e-2
    t_max: float = 10.0
    rotation_iters: int = 3
    rotation_every: int = 1
    theta_init: float = math.pi / 2
    center_inputs: bool = True

    def __post_init__(self) -> None:
        check_range(self, "t_min", low=0.0, low_inclusive=False)
        check_range(self, "t_max", low=0.0, low_inclusive=False)
        check_ordered(self, "t_min", "t_max")
        check_range(self, "rotation_iters", low=1)
        check_range(self, "rotation_every", low=1)
        check_choice(self, "center_inputs", (True, False))

    @property
    def monotone_weight_sign(self) -> bool:
        return False

    @property
    def weight_sign_kind(self) -> str:
        return "rotated (the sign of R1^T X R2 blended per channel, a mix of the whole channel)"

    def _initial(self) -> tuple[float, float]:
        return ede_schedule(0, 1, self.t_min, self.t_max)

    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module:
        t, k = self._initial()
        return RBNNWeightSign(layer.weight.shape, t, k, self.theta_init)

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module:
        return RBNNActSign(self._initial()[0], center=self.center_inputs)

    def build_scale(self, layer: BinaryLayer) -> Scale:
        return LearnableScale(layer.num_output_channels, init="mean_abs", weight=layer.weight)

    def on_step_start(self, layers: LayerList, state: TrainState) -> None:
        t, k = ede_schedule(state.epoch, state.epochs, self.t_min, self.t_max)
        refit = state.batch == 0 and state.epoch % self.rotation_every == 0
        for _, layer in layers:
            if isinstance(layer.input_binarizer, RBNNActSign):
                layer.input_binarizer.t.fill_(t)
            binarizer = layer.weight_binarizer
            if isinstance(binarizer, RBNNWeightSign):
                binarizer.t.fill_(t)
                binarizer.k.fill_(k)
                if refit:
                    binarizer.refresh(layer.weight, self.rotation_iters)

    @torch.no_grad()
    def after_optimizer_step(self, layers: LayerList, state: TrainState) -> dict[str, Tensor]:
        """``rbnn/t`` and ``rbnn/sin_theta`` (0-d tensors, no host sync)."""
        found = layers_with(layers, RBNNWeightSign)
        if not found:
            return {}
        thetas = torch.cat([b.theta.detach().float().flatten() for _, b in found])
        return {METRIC_T: found[0][1].t.detach().float().clone(),
                METRIC_SIN_THETA: torch.sin(thetas).abs().mean()}  # fmt: skip
