"""Pieces shared by the model families."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bnnkit.nn import BinaryConv2d


def binary_conv3x3(cin: int, cout: int, stride: int = 1) -> BinaryConv2d:
    """3x3 binary conv, padding 1, no bias (the binary conv of every model here)."""
    return BinaryConv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut "option A" of ReCU's CIFAR ResNets.

    ``AvgPool2d(2)`` when ``stride == 2``, then zero-padding of ``(cout - cin) // 2`` channels
    on each side (``planes // 4`` for the usual doubling).
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if (cout - cin) % 2:
            raise ValueError(f"option-A shortcut needs an even channel increase, got {cin}->{cout}")
        self.stride, self.pad = stride, (cout - cin) // 2

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = F.avg_pool2d(x, self.stride)
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.pad}"


def kaiming_init_convs(model: nn.Module) -> None:
    """``kaiming_normal_`` (fan_in, gain sqrt(2)) on every conv weight, binary ones included."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)


def small_uniform_init(model: nn.Module) -> None:
    """ReActNet ``HardBinaryConv`` init: binary conv weights ``rand * 0.001`` (all positive)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BinaryConv2d):
                m.weight.copy_(torch.rand_like(m.weight) * 0.001)


def check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} = {value!r} is not valid; choose one of {choices}")
