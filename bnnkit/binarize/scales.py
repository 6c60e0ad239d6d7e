"""Weight-side scaling factors: ``binarized_weight = alpha * binarizer(W)``.

A scale module maps the latent weight ``W`` (dim 0 = output channel) to a per-channel
``alpha`` broadcastable to ``W``; :meth:`Scale.scale_weight` multiplies it onto the binarized weight.
Names for layer keywords: ``"none"`` (no scale), ``"mean_abs"``, ``"learnable"``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from bnnkit._registry import Registry
from bnnkit.binarize.functional import channel_mean_abs

SCALES: Registry[Callable[..., Scale]] = Registry("scale")


def _broadcast_shape(weight: Tensor) -> tuple[int, ...]:
    return (weight.shape[0],) + (1,) * (weight.ndim - 1)


class Scale(nn.Module):
    """Base class of weight scales: ``forward(W) -> alpha``; ``scale_weight(b, W) -> alpha * b``."""

    def scale_weight(self, binary: Tensor, weight: Tensor) -> Tensor:
        """Scale the binarized weight ``binary`` of latent weight ``weight``."""
        return binary * self(weight)


class MeanAbsScale(Scale):
    r"""Per-output-channel :math:`\alpha_c = \lVert W_c \rVert_1 / n`, detached (XNOR-Net).

    Args:
        straight_through: if True, the scale acts in the forward pass only and the gradient
            reaches the binarizer unscaled, as in the official Bi-Real and ReActNet code
            (:math:`\partial(\alpha\,\mathrm{sign}(W))/\partial W := 1_{|W| \le 1}`). If False
            (default), :math:`\alpha` multiplies the gradient as in the XNOR-Net paper
            (:math:`\alpha\,1_{|W| \le 1}`; the paper's :math:`1/n` term through
            :math:`\alpha` is dropped because :math:`\alpha` is detached).
    """

    def __init__(self, straight_through: bool = False) -> None:
        super().__init__()
        self.straight_through = bool(straight_through)

    def forward(self, weight: Tensor) -> Tensor:
        return channel_mean_abs(weight).detach()

    def scale_weight(self, binary: Tensor, weight: Tensor) -> Tensor:
        scaled = binary * self(weight)
        if self.straight_through:
            return binary + (scaled - binary).detach()
        return scaled

    def extra_repr(self) -> str:
        return f"straight_through={self.straight_through}"


class LearnableScale(Scale):
    r"""A learnable per-output-channel scale :math:`\alpha` (a ``Parameter`` of shape ``(C,)``).

    Args:
        num_channels: number of output channels.
        init: ``"ones"``, ``"uniform"`` (U[0, 1), ReCU's code) or ``"mean_abs"``
            (:math:`\lVert W_c\rVert_1/n` of ``weight``, OvSW's ``--scaling_factor True``).
        weight: the latent weight, required for ``init="mean_abs"``.
    """

    INITS = ("ones", "uniform", "mean_abs")

    def __init__(self, num_channels: int, init: str = "ones", weight: Tensor | None = None):
        super().__init__()
        if init not in self.INITS:
            raise ValueError(f"LearnableScale init must be one of {self.INITS}, got {init!r}")
        if init == "mean_abs":
            if weight is None or weight.shape[0] != num_channels:
                raise ValueError("LearnableScale(init='mean_abs') needs weight= of shape (C, ...)")
            value = channel_mean_abs(weight.detach()).reshape(num_channels).clone()
        elif init == "uniform":
            value = torch.rand(num_channels)
        else:
            value = torch.ones(num_channels)
        ref = weight if weight is not None else value
        self.alpha = nn.Parameter(value.to(device=ref.device, dtype=ref.dtype))
        self.init = init

    def forward(self, weight: Tensor) -> Tensor:
        return self.alpha.view(_broadcast_shape(weight))

    def extra_repr(self) -> str:
        return f"num_channels={self.alpha.numel()}, init={self.init!r}"


def _mean_abs(weight: Tensor | None = None) -> MeanAbsScale:
    return MeanAbsScale()


def _learnable(weight: Tensor | None = None) -> LearnableScale:
    if weight is None:
        raise ValueError(
            "scale 'learnable' needs the layer weight: get_scale('learnable', weight=W)"
        )
    return LearnableScale(weight.shape[0], "mean_abs", weight)


SCALES.register("mean_abs", _mean_abs)
SCALES.register("learnable", _learnable)


def list_scales() -> list[str]:
    """Scale names accepted by layers: ``"none"`` plus the registered ones."""
    return ["none", *SCALES.names()]


def get_scale(spec: str | Scale | None, weight: Tensor | None = None) -> Scale | None:
    """Resolve a scale given by name, module or ``None``.

    ``"none"`` and ``None`` give ``None``; ``"mean_abs"`` a :class:`MeanAbsScale`;
    ``"learnable"`` a :class:`LearnableScale` initialised to mean|W| of ``weight``.
    """
    if spec is None or spec == "none":
        return None
    if isinstance(spec, Scale):
        return spec
    if isinstance(spec, str):
        return SCALES.get(spec)(weight=weight)
    raise TypeError(
        f"a scale must be a name, a bnnkit.binarize.Scale module or None, got {type(spec).__name__}; "
        f"valid names: {', '.join(list_scales())}"
    )
