"""Pieces shared by the model families."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bnnkit.errors import ConfigError
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


class BiRealBlock(nn.Module):
    """Two binary 3x3 convs, each with its own shortcut (Bi-Real style), BN and hardtanh.

    ``out = hardtanh(BN1(conv1(x)) + shortcut(x))``; ``out = hardtanh(BN2(conv2(out)) + out)``,
    where ``shortcut`` is the identity when ``None``. ResNet-20 (CIFAR) passes an option-A
    shortcut, the one-stage ImageNet ResNets an FP conv1x1 + BN.
    """

    def __init__(self, cin: int, cout: int, stride: int, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = binary_conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.shortcut = shortcut
        self.conv2 = binary_conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.hardtanh(self.bn1(self.conv1(x)) + identity)
        return F.hardtanh(self.bn2(self.conv2(out)) + out)


def make_stages(
    block: Callable[[int, int, int], nn.Module], layers: list[int], widths: list[int], cin: int
) -> list[nn.Sequential]:
    """ResNet stages: ``layers[i]`` blocks of width ``widths[i]``; the first block of every
    stage but the first has stride 2. ``block(cin, cout, stride)`` builds one block."""
    stages = []
    for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
        blocks = []
        for j in range(n):
            blocks.append(block(cin, w, 2 if (i > 0 and j == 0) else 1))
            cin = w
        stages.append(nn.Sequential(*blocks))
    return stages


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
    """A model option's value must be one of ``choices`` (a :class:`ConfigError` if not)."""
    if value not in choices:
        raise ConfigError(
            "is not valid", location=(name,), value=value, allowed=", ".join(map(repr, choices))
        )
