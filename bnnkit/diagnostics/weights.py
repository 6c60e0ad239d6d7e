"""Statistics of a binary layer's weight as its sign sees it (the trackers' per-layer values):
the quantization error of the best scaled sign, the Laplace entropy (ReCU §2.5), and what a
layer takes the sign of."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnnkit.nn import BinaryLayer


def quantization_error(w: Tensor) -> Tensor:
    r"""Quantization error of the best per-channel scaled sign of ``w`` (0-d tensor).

    :math:`\frac1n\sum_i (w_i - \alpha_{c(i)}\,\mathrm{sign}(w_i))^2` with
    :math:`\alpha_c = \mathrm{mean}_{i \in c}|w_i|` over output channel ``c`` (dim 0), the
    scale that minimises the error (XNOR-Net), and sign(0) = +1.
    """
    w = w.detach().float()
    flat = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(1, -1)
    alpha = flat.abs().mean(dim=1, keepdim=True)
    s = torch.where(flat >= 0, 1.0, -1.0)
    return (flat - alpha * s).square().mean()


def laplace_entropy(w: Tensor) -> Tensor:
    r"""Differential entropy of a Laplace fit of ``w``: :math:`1 + \ln(2\hat b)`,
    :math:`\hat b = \mathrm{mean}|w|` (the maximum-likelihood scale; ReCU §2.5). 0-d tensor."""
    return 1.0 + torch.log(2.0 * w.detach().float().abs().mean())


def signed_tensor(module: nn.Module) -> Tensor:
    """What a tracked module's weight sign is taken of: a binary layer's
    :meth:`~bnnkit.nn.BinaryLayer.sign_input`, else the module's ``.weight`` (detached)."""
    with torch.no_grad():
        if isinstance(module, BinaryLayer) and module.binary_weight:
            return module.sign_input().detach()
        return module.weight.detach()
