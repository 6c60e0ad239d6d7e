"""ReActNet's learnable shifts: ``LearnableBias``, ``RSign`` and ``RPReLU``.

Liu et al., "ReActNet: Towards Precise Binary Neural Network with Generalized Activation
Functions", ECCV 2020. Per-channel parameters act on dim 1 (``(N, C, ...)`` inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnnkit.binarize import Binarizer, shifted_approx_sign


def _channel_view(p: Tensor, x: Tensor) -> Tensor:
    return p.view(1, -1, *([1] * (x.ndim - 2)))


class LearnableBias(nn.Module):
    r"""Adds a learnable per-channel bias: :math:`y = x + b_c` (``b`` initialised to 0)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + _channel_view(self.bias, x)

    def extra_repr(self) -> str:
        return f"num_channels={self.bias.numel()}"


class RSign(Binarizer):
    r"""ReAct-Sign: sign with a learnable per-channel threshold, used as an input binarizer.

    Forward :math:`\mathrm{sign}(x + b_c)` (threshold :math:`\alpha_c = -b_c`, ``b`` init 0);
    backward ApproxSign :math:`\max(0, 2 - 2|x + b_c|)` (ReActNet ``move0`` + ``BinaryActivation``).
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return shifted_approx_sign(x, self.bias)

    def sign_input(self, x: Tensor) -> Tensor:
        """``x + b``."""
        return x + _channel_view(self.bias, x)

    def inference_shift(self) -> Tensor:
        """The learnable shift ``b``: RSign computes ``sign(x + b)`` in eval mode too."""
        return self.bias.detach().float().clone()

    def extra_repr(self) -> str:
        return f"num_channels={self.bias.numel()}"


class RPReLU(nn.Module):
    r"""ReAct-PReLU: :math:`f(x) = \mathrm{PReLU}_{\beta_c}(x - \gamma_c) + \zeta_c`.

    That is :math:`x - \gamma_c + \zeta_c` for :math:`x > \gamma_c`, else
    :math:`\beta_c(x - \gamma_c) + \zeta_c`. Implemented as ReActNet's ``move1`` (bias
    :math:`-\gamma`, init 0) -> ``PReLU`` (slope :math:`\beta`, init 0.25) -> ``move2``
    (bias :math:`\zeta`, init 0).
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.shift_in = LearnableBias(num_channels)
        self.prelu = nn.PReLU(num_channels)
        self.shift_out = LearnableBias(num_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.shift_out(self.prelu(self.shift_in(x)))


class Maxout(nn.Module):
    r"""AdaBin's nonlinearity (Tu et al., ECCV 2022, official code's ``Maxout``):
    :math:`f(x) = p_c\,\mathrm{relu}(x) - n_c\,\mathrm{relu}(-x)`, i.e. :math:`p_c x` for
    :math:`x > 0` and :math:`n_c x` for :math:`x < 0`, with learnable per-channel slopes
    (dim 1), initialised :math:`p = 1`, :math:`n = 0.25` (PReLU(0.25) at init). The slopes are
    unconstrained: with :math:`p < n` (or a negative slope) the unit is not monotone, as in
    the released checkpoints. Gradient 0 at :math:`x = 0` (that of ``relu``).
    """

    def __init__(self, num_channels: int, neg_init: float = 0.25, pos_init: float = 1.0) -> None:
        super().__init__()
        self.pos_scale = nn.Parameter(torch.full((num_channels,), float(pos_init)))
        self.neg_scale = nn.Parameter(torch.full((num_channels,), float(neg_init)))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1, *([1] * (x.ndim - 2)))
        p, n = self.pos_scale.view(shape), self.neg_scale.view(shape)
        return p * torch.relu(x) - n * torch.relu(-x)

    def extra_repr(self) -> str:
        return f"num_channels={self.pos_scale.numel()}"
