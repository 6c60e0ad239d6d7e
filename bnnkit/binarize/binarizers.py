"""Binarizer modules and their name registry.

A binarizer is a small ``nn.Module`` that maps a float tensor to its binarized form (two
values) with a surrogate gradient. Layers accept one by name, as a module, or ``None``
(full precision), as larq's ``input_quantizer`` / ``kernel_quantizer`` do::

    get_binarizer("approx_sign")       # -> ApproxSign()
    get_binarizer(EDESign(t=0.1))      # -> the same module
    get_binarizer(None)                # -> None (full precision)

Every bnnkit binarizer derives from :class:`Binarizer`, which makes it answer the two
questions the rest of bnnkit asks about a binarizer, so that no other package keeps a table of
binarizer types: what tensor its sign is taken of (:meth:`Binarizer.sign_input`: the sign
history and the trackers read it) and what it computes at inference
(:meth:`Binarizer.inference_shift`: the packed export reproduces ``sign(x + b)``).

Register your own with ``@register_binarizer("name")`` on a :class:`Binarizer` subclass whose
constructor arguments all have defaults.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from bnnkit._registry import Registry
from bnnkit.binarize import autograd as A


class Binarizer(nn.Module):
    r"""Base class of binarizer modules: ``forward(x)`` is a two-valued function of ``x``.

    Subclasses say themselves, by overriding two methods, what the rest of bnnkit needs to
    know about them:

    * :meth:`sign_input`: the tensor :math:`u(x)` whose sign the output is,
      :math:`\mathrm{forward}(x) \propto \mathrm{sign}(u(x))` (an affine function of it for an
      :attr:`affine_output` binarizer). ``x`` itself for an
      element-wise sign (the default); ReCU's standardised, clamped weight; IR-Net's
      standardised weight. Read by the per-layer sign history (flips, silent weights).
    * :meth:`inference_shift`: ``b`` with eval-mode output :math:`\mathrm{sign}(x + b)`
      (per channel, dim 1), ``None`` for :math:`\mathrm{sign}(x)`. The default raises
      ``NotImplementedError`` (the packed export then refuses the layer): a binarizer must
      state its inference function to be exported.
    """

    two_valued: bool = True
    """Whether the output takes two values per channel (a binary weight / input). False for a
    real-valued weight transform (BiPer's stage-1 :class:`SineWeight`): its layer counts as
    32-bit, has no sign history and is not exported to XNOR-popcount."""

    affine_output: bool = False
    r"""Whether the output is an affine map of the sign, :math:`c + d\,\mathrm{sign}(u(x))`
    with a centre :math:`c` possibly non-zero and :math:`d` possibly negative (AdaBin's
    :math:`\alpha(\mathrm{sign} + \beta)`), not :math:`\pm d`: two values per channel still,
    but ±1 is not one of them, so a conv refuses ``pad_value`` ±1 with it."""

    def sign_input(self, x: Tensor) -> Tensor:
        """The tensor whose sign the output is (``x`` for an element-wise sign)."""
        return x

    def inference_shift(self) -> Tensor | None:
        """``b`` such that the eval-mode output is ``sign(x + b)``; ``None`` for ``sign(x)``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not state its inference function as sign(x + b)"
        )


class PlainSign(Binarizer):
    """A binarizer whose output at inference is ``sign(x)`` of its input, element-wise."""

    def inference_shift(self) -> None:
        return None


BINARIZERS: Registry[type[Binarizer]] = Registry("binarizer")


def register_binarizer(
    name: str, *, aliases: tuple[str, ...] = ()
) -> Callable[[type[Binarizer]], type[Binarizer]]:
    """Class decorator: register a :class:`Binarizer` subclass under ``name``."""
    return BINARIZERS.decorator(name, aliases=aliases)


def list_binarizers() -> list[str]:
    """Canonical binarizer names, sorted."""
    return BINARIZERS.names()


def get_binarizer(spec: str | nn.Module | None, **kwargs: object) -> nn.Module | None:
    """Resolve a binarizer given by name, module or ``None``.

    Args:
        spec: a registered name (see :func:`list_binarizers`), an ``nn.Module`` (returned
            as is) or ``None`` (full precision, returns ``None``).
        **kwargs: constructor arguments when ``spec`` is a name.

    Raises:
        ValueError: unknown name (the message lists the valid names).
        TypeError: ``spec`` of another type, or kwargs given with a module.
    """
    if spec is None:
        if kwargs:
            raise TypeError("binarizer arguments given but the binarizer is None")
        return None
    if isinstance(spec, nn.Module):
        if kwargs:
            raise TypeError("binarizer arguments can only be given with a binarizer name")
        return spec
    if isinstance(spec, str):
        return BINARIZERS.get(spec)(**kwargs)
    raise TypeError(
        f"a binarizer must be a name, an nn.Module or None, got {type(spec).__name__}; "
        f"valid names: {', '.join(list_binarizers())}"
    )


@register_binarizer("identity_ste")
class IdentitySTESign(PlainSign):
    r"""Sign with the identity straight-through estimator.

    Forward :math:`\mathrm{sign}(x)` (sign(0) = +1); backward :math:`\partial/\partial x = 1`.
    The weight binarizer of ReCU and OvSW (Bengio et al. 2013).
    """

    def forward(self, x: Tensor) -> Tensor:
        return A.identity_ste_sign(x)


@register_binarizer("clipped_ste", aliases=("ste_sign",))
class ClippedSTESign(PlainSign):
    r"""Sign with the clipped straight-through estimator (larq's ``ste_sign``).

    Forward :math:`\mathrm{sign}(x)`; backward :math:`1_{|x| \le c}` (``clip_value`` c = 1).
    Hubara et al., NeurIPS 2016; the weight estimator of XNOR-Net, Bi-Real and ReActNet.
    """

    def __init__(self, clip_value: float = 1.0) -> None:
        super().__init__()
        if not clip_value > 0:
            raise ValueError(f"clip_value must be > 0, got {clip_value}")
        self.clip_value = float(clip_value)
        self._bounds = A.clip_bounds(self.clip_value)  # per dtype, computed outside any graph

    def forward(self, x: Tensor) -> Tensor:
        return A._ClippedSTESign.apply(x, self._bounds[x.dtype])

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


@register_binarizer("approx_sign")
class ApproxSign(PlainSign):
    r"""Sign with Bi-Real Net's ApproxSign estimator.

    Forward :math:`\mathrm{sign}(x)`; backward :math:`\max(0, 2 - 2|x|)`, the derivative of the
    piecewise quadratic :math:`F` (Liu et al., ECCV 2018). The activation estimator of Bi-Real,
    ReActNet, ReCU, ReBNN and OvSW.
    """

    def forward(self, x: Tensor) -> Tensor:
        return A.approx_sign(x)


@register_binarizer("ede")
class EDESign(PlainSign):
    r"""Sign with IR-Net's Error Decay Estimator.

    Forward :math:`\mathrm{sign}(x)`; backward :math:`k\,t\,(1 - \tanh^2(t x))`. ``t`` and ``k``
    are 0-d float buffers (saved in ``state_dict``, moved by ``.to()``) that a schedule writes in
    place (:class:`bnnkit.methods.irnet.IRNet` does, once per epoch). Qin et al., CVPR 2020.
    """

    t: Tensor
    k: Tensor

    def __init__(self, t: float = 1.0, k: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("t", torch.tensor(float(t)))
        self.register_buffer("k", torch.tensor(float(k)))

    def forward(self, x: Tensor) -> Tensor:
        return A.ede_sign(x, self.t.to(x.dtype), self.k.to(x.dtype))


@register_binarizer("swish_sign")
class SwishSign(PlainSign):
    r"""Sign with the SwishSign estimator of BNN+.

    Forward :math:`\mathrm{sign}(x)`; backward
    :math:`\beta(2 - \beta x \tanh(\beta x/2)) / (1 + \cosh(\beta x))` (``beta`` = 5 as in larq).
    Darabi et al., 2018.
    """

    def __init__(self, beta: float = 5.0) -> None:
        super().__init__()
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = float(beta)

    def forward(self, x: Tensor) -> Tensor:
        return A.swish_sign(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


@register_binarizer("magnitude_aware_sign")
class MagnitudeAwareSign(Binarizer):
    r"""Magnitude-aware sign for weights (Bi-Real Net §3.3; larq's ``magnitude_aware_sign``).

    Forward :math:`\alpha_c\,\mathrm{sign}(W)` with :math:`\alpha_c = \lVert W_c\rVert_1 / n`
    per output channel, detached; backward :math:`\alpha_c \cdot 1_{|W| \le c}`.
    """

    def __init__(self, clip_value: float = 1.0) -> None:
        super().__init__()
        if not clip_value > 0:
            raise ValueError(f"clip_value must be > 0, got {clip_value}")
        self.clip_value = float(clip_value)

    def forward(self, x: Tensor) -> Tensor:
        return A.magnitude_aware_sign(x, self.clip_value)

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


@register_binarizer("std_approx_sign")
class StdNormApproxSign(Binarizer):
    r"""ApproxSign on the input divided by its per-sample std, in training only (ReCU, OvSW).

    Training: :math:`\hat a = (a + b_c) / \sqrt{\mathrm{var}_{C,H,W}(a + b_c) + 10^{-5}}`
    (unbiased variance per sample, no mean subtraction); eval: :math:`\hat a = a + b_c`. The
    sign is the same either way (the denominator is positive). Forward
    :math:`\mathrm{sign}(\hat a)`, backward ApproxSign :math:`\max(0, 2 - 2|\hat a|)` evaluated
    on the normalised value, then through the normalisation.

    Args:
        detach_std: False for ReCU (the gradient flows through the std), True for OvSW.
        num_channels: if given, a learnable per-channel shift :math:`b_c` (init 0, ReActNet's
            ``move0``) is added first, as in the two-step (ReAct-ResNet) variants.
    """

    def __init__(self, detach_std: bool = False, num_channels: int | None = None) -> None:
        super().__init__()
        self.detach_std = bool(detach_std)
        self.bias = nn.Parameter(torch.zeros(num_channels)) if num_channels else None

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is not None:
            x = x + self.bias.view(1, -1, *([1] * (x.ndim - 2)))
        if self.training:  # fused: sign(x), and the normalised surrogate in the backward
            return A.std_norm_approx_sign(x, self.detach_std)
        return A.approx_sign(x)

    def sign_input(self, x: Tensor) -> Tensor:
        """``x + b`` (the per-sample std only divides by a positive number)."""
        return x if self.bias is None else x + self.bias.view(1, -1, *([1] * (x.ndim - 2)))

    def inference_shift(self) -> Tensor | None:
        """The learnable shift ``b`` (or ``None``): the std never changes the sign."""
        return None if self.bias is None else self.bias.detach().float().clone()

    def extra_repr(self) -> str:
        return f"detach_std={self.detach_std}, bias={self.bias is not None}"


@register_binarizer("periodic_sign")
class PeriodicSign(Binarizer):
    r"""BiPer's weight binarizer (Vargas et al., CVPR 2024): a square wave of the latent weight.

    Forward :math:`b = \mathrm{sign}(\sin(\omega w))` (sign(0) = +1); backward the identity STE
    through the outer sign and the exact derivative of the sine,
    :math:`\partial b / \partial w := \omega \cos(\omega w)` (amplitude 1, no 1/ω: the official
    code's). The sign is that of :math:`\sin(\omega w)`, not of :math:`w`: a weight beyond the
    first half-period :math:`\pi/\omega` binarizes against its own sign.
    """

    def __init__(self, omega: float = 20.0) -> None:
        super().__init__()
        self.omega = float(omega)

    def forward(self, w: Tensor) -> Tensor:
        return A.identity_ste_sign(torch.sin(self.omega * w))

    @torch.no_grad()
    def sign_input(self, x: Tensor) -> Tensor:
        r""":math:`\sin(\omega w)`, whose sign the binary weight is."""
        return torch.sin(self.omega * x)

    def inference_shift(self) -> Tensor | None:
        raise NotImplementedError("PeriodicSign binarizes weights only (a weight binarizer)")

    def extra_repr(self) -> str:
        return f"omega={self.omega:g}"


@register_binarizer("sine_weight")
class SineWeight(PeriodicSign):
    r"""BiPer's stage-1 weight transform: the real-valued :math:`\sin(\omega w)` (not two-valued),
    with its exact gradient :math:`\omega \cos(\omega w)`, the same as :class:`PeriodicSign`'s
    surrogate. Stage 2 (:class:`PeriodicSign`) starts from its sign."""

    two_valued = False

    def forward(self, w: Tensor) -> Tensor:
        return torch.sin(self.omega * w)
