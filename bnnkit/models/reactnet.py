"""ReActNet two-step topologies: ReAct-ResNet-18/34 (Bi-Real based) and ReActNet-A (MobileNetV1).

Where the binary layers' inputs are binarized with a learnable shift (ReActNet's ``move0`` /
``move11`` / ``move21`` + ``BinaryActivation``), that shift is the *method's* input binarizer
(``RSign`` of the ``reactnet`` / ``rebnn`` methods), attached by :func:`bnnkit.binarize_`;
the RPReLU after each residual add is part of the topology here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnnkit.models.common import binary_conv3x3, check_choice, make_stages, small_uniform_init
from bnnkit.models.registry import register_model
from bnnkit.nn import BinaryConv2d, RPReLU

BINARY_INITS = ("default", "small_uniform")


class ReActBlock(nn.Module):
    """``[RSign] -> binary conv3x3 -> BN -> + shortcut -> RPReLU``.

    Shortcut: identity, or ``AvgPool2d(2, s) -> FP conv1x1 -> BN`` where stride or width change.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.binary_conv = binary_conv3x3(cin, cout, stride)
        self.bn = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(2, stride),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
        self.rprelu = RPReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.rprelu(self.bn(self.binary_conv(x)) + identity)


class ReActResNet(nn.Module):
    """Stem FP conv7x7/2 -> BN -> maxpool (no activation); single-conv blocks; avgpool -> FC."""

    def __init__(self, layers: list[int], num_classes: int, binary_init: str) -> None:
        super().__init__()
        check_choice("binary_init", binary_init, BINARY_INITS)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = make_stages(ReActBlock, layers, [64, 128, 256, 512], 64)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        if binary_init == "small_uniform":
            small_uniform_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model(input_size=(3, 224, 224), num_classes=1000, dataset="imagenet")
def reactnet_resnet18(num_classes: int = 1000, binary_init: str = "default") -> ReActResNet:
    """ReAct-ResNet-18 (ReActNet / ReBNN / ReCU two-stage / OvSW*): [4, 4, 4, 4] single-conv
    blocks, 16 binary 3x3 convs, RPReLU after each add, no BN1d before the FC.

    Args:
        binary_init: ``"default"`` (PyTorch's conv init, what step 1's ``nn.Conv2d`` starts
            from) or ``"small_uniform"`` (``rand * 0.001``, the official ``HardBinaryConv``
            init used when step 2 starts from scratch).
    """
    return ReActResNet([4, 4, 4, 4], num_classes, binary_init)


@register_model(input_size=(3, 224, 224), num_classes=1000, dataset="imagenet")
def reactnet_resnet34(num_classes: int = 1000, binary_init: str = "default") -> ReActResNet:
    """ReAct-ResNet-34: [6, 8, 12, 6] single-conv blocks, 32 binary 3x3 convs."""
    return ReActResNet([6, 8, 12, 6], num_classes, binary_init)


class ReActNetABlock(nn.Module):
    """One ReActNet-A block, two halves.

    1. ``[RSign] -> binary 3x3 conv (C_in -> C_in, stride s, full not depthwise) -> BN``,
       add the input (2x2 avgpool when s = 2), RPReLU.
    2. ``[RSign] -> binary 1x1 conv -> BN``, add the half-1 output, RPReLU. When C_out =
       2 C_in: two parallel 1x1 convs C_in -> C_in, each with its own BN and each added to
       the same residual, then concatenated.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cout not in (cin, 2 * cin):
            raise ValueError(f"ReActNet-A block needs C_out in (C_in, 2 C_in), got {cin}->{cout}")
        self.conv3x3 = binary_conv3x3(cin, cin, stride)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else None
        self.rprelu1 = RPReLU(cin)
        if cout == cin:
            self.pw = nn.ModuleList([BinaryConv2d(cin, cout, 1, bias=False)])
        else:
            self.pw = nn.ModuleList([BinaryConv2d(cin, cin, 1, bias=False) for _ in range(2)])
        self.bn2 = nn.ModuleList([nn.BatchNorm2d(c.out_channels) for c in self.pw])
        self.rprelu2 = RPReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.pool is None else self.pool(x)
        out1 = self.rprelu1(self.bn1(self.conv3x3(x)) + identity)
        outs = [bn(conv(out1)) + out1 for conv, bn in zip(self.pw, self.bn2, strict=True)]
        return self.rprelu2(outs[0] if len(outs) == 1 else torch.cat(outs, dim=1))


class ReActNetA(nn.Module):
    """ReActNet-A: FP conv3x3/2 (3 -> 32) -> BN; 13 blocks; avgpool -> FC (FP)."""

    WIDTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)

    def __init__(self, num_classes: int, binary_init: str) -> None:
        super().__init__()
        check_choice("binary_init", binary_init, BINARY_INITS)
        self.conv1 = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks = []
        for cin, cout in zip(self.WIDTHS[:-1], self.WIDTHS[1:], strict=True):
            stride = 2 if (cout != cin and cout != 64) else 1
            blocks.append(ReActNetABlock(cin, cout, stride))
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)
        if binary_init == "small_uniform":
            small_uniform_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.bn1(self.conv1(x)))
        return self.fc(self.avgpool(x).flatten(1))


@register_model(input_size=(3, 224, 224), num_classes=1000, dataset="imagenet")
def reactnet_a(num_classes: int = 1000, binary_init: str = "default") -> ReActNetA:
    """ReActNet-A (MobileNetV1-based): 13 blocks, 31 binary convs (13 3x3, 18 1x1).

    Args:
        binary_init: as for :func:`reactnet_resnet18`.
    """
    return ReActNetA(num_classes, binary_init)
