"""Pieces shared by the model families."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bnnkit.errors import ConfigError
from bnnkit.nn import BinaryConv2d, Maxout


def binary_conv3x3(cin: int, cout: int, stride: int = 1) -> BinaryConv2d:
    """3x3 binary conv, padding 1, no bias (the binary conv of every model here)."""
    return BinaryConv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut "option A" of the CIFAR ResNets.

    Where ``stride == 2``: ``AvgPool2d(2)`` (ReCU's code) or, with ``subsample``, every second
    row and column ``x[:, :, ::2, ::2]`` (AdaBin's code, the original ResNet option A); then
    zero-padding of ``(cout - cin) // 2`` channels on each side (``planes // 4`` for the usual
    doubling).
    """

    def __init__(self, cin: int, cout: int, stride: int, subsample: bool = False) -> None:
        super().__init__()
        if (cout - cin) % 2:
            raise ValueError(f"option-A shortcut needs an even channel increase, got {cin}->{cout}")
        self.stride, self.pad, self.subsample = stride, (cout - cin) // 2, bool(subsample)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            s = self.stride
            x = x[:, :, ::s, ::s] if self.subsample else F.avg_pool2d(x, s)
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x

    def extra_repr(self) -> str:
        how = ", subsample" if self.subsample else ""
        return f"stride={self.stride}, pad_channels={self.pad}{how}"


Activation = Callable[[int], nn.Module]
"""A nonlinearity factory: ``act(num_channels) -> module``."""


def hardtanh(num_channels: int) -> nn.Module:
    """The papers' default nonlinearity (no parameters)."""
    return nn.Hardtanh()


def maxout(num_channels: int) -> nn.Module:
    """AdaBin's per-channel two-slope :class:`~bnnkit.nn.Maxout`."""
    return Maxout(num_channels)


class BiRealBlock(nn.Module):
    """Two binary 3x3 convs, each with its own shortcut (Bi-Real style), BN and a nonlinearity.

    ``out = act1(BN1(conv1(x)) + shortcut(x))``; ``out = act2(BN2(conv2(out)) + out)``,
    where ``shortcut`` is the identity when ``None`` and ``act`` hardtanh unless given (AdaBin:
    :func:`maxout`). ResNet-20 (CIFAR) passes an option-A shortcut, the one-stage ImageNet
    ResNets an FP conv1x1 + BN.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        shortcut: nn.Module | None,
        act: Activation = hardtanh,
    ) -> None:
        super().__init__()
        self.conv1 = binary_conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.shortcut = shortcut
        self.act1 = act(cout)
        self.conv2 = binary_conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = act(cout)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.act1(self.bn1(self.conv1(x)) + identity)
        return self.act2(self.bn2(self.conv2(out)) + out)


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
