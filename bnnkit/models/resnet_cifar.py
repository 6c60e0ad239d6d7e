"""CIFAR ResNets of the ReCU / IR-Net / OvSW code: ``resnet20`` and ``resnet18_cifar``.

Binary layers are ``BinaryConv2d`` without binarizers; :func:`bnnkit.binarize_` attaches a
method. The stem conv and the classifier stay full precision, as in the papers.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from bnnkit.models.common import (
    BiRealBlock,
    OptionAShortcut,
    binary_conv3x3,
    check_choice,
    kaiming_init_convs,
    make_stages,
)
from bnnkit.models.registry import register_model
from bnnkit.nn import BinaryConv2d


class BasicBlock(nn.Module):
    """ResNet-18 (CIFAR) block with one shortcut per block.

    ``out = hardtanh(BN1(conv1(x)))``; ``out = hardtanh(BN2(conv2(out)) + shortcut(x))``.
    Shortcut: parameter-free option A (ReCU) or a *binary* 1x1 conv + BN (OvSW).
    """

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = binary_conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = binary_conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            if shortcut == "binary_conv":
                self.shortcut = nn.Sequential(
                    BinaryConv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )
            else:
                self.shortcut = OptionAShortcut(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.hardtanh(self.bn1(self.conv1(x)))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.hardtanh(self.bn2(self.conv2(out)) + identity)


class CifarResNet(nn.Module):
    """Stem (FP 3x3 conv + BN [+ hardtanh]) -> stages -> head."""

    def __init__(
        self,
        block: str,
        layers: list[int],
        widths: list[int],
        num_classes: int,
        stem_act: bool,
        head: str,
        shortcut: str = "A",
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.stem_act = stem_act

        def make_block(cin: int, cout: int, stride: int) -> nn.Module:
            if block == "bireal":
                changes = stride != 1 or cin != cout
                return BiRealBlock(
                    cin, cout, stride, OptionAShortcut(cin, cout, stride) if changes else None
                )
            return BasicBlock(cin, cout, stride, shortcut)

        stages = make_stages(make_block, layers, widths, widths[0])
        blocks = [b for stage in stages for b in stage]
        cin = widths[-1]
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = head
        if head == "bn2d_conv":  # OvSW cResNet18: BN2d + FC as a 1x1 conv with bias
            self.bn_head = nn.BatchNorm2d(cin)
            self.fc = nn.Conv2d(cin, num_classes, 1, bias=True)
        else:  # ReCU: BatchNorm1d before the Linear
            self.bn_head = nn.BatchNorm1d(cin)
            self.fc = nn.Linear(cin, num_classes)
        kaiming_init_convs(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(x))
        if self.stem_act:
            x = F.hardtanh(x)
        x = self.pool(self.layers(x))
        if self.head == "bn2d_conv":
            return self.fc(self.bn_head(x)).flatten(1)
        return self.fc(self.bn_head(x.flatten(1)))


@register_model(input_size=(3, 32, 32), num_classes=10, dataset="cifar")
def resnet20(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-20, Bi-Real variant of ReCU / IR-Net / OvSW (18 binary 3x3 convs).

    Widths 16/32/64, [3, 3, 3] blocks, a shortcut around each binary conv (option A, avgpool +
    zero-pad, where the shape changes). Stem: FP conv3x3 -> BN -> hardtanh. Head: global
    avgpool -> BatchNorm1d(64) -> Linear (FP). Init: kaiming_normal_ on every conv.
    """
    return CifarResNet("bireal", [3, 3, 3], [16, 32, 64], num_classes, True, "bn1d")


@register_model(input_size=(3, 32, 32), num_classes=10, dataset="cifar")
def resnet18_cifar(num_classes: int = 10, variant: str = "recu") -> CifarResNet:
    """CIFAR ResNet-18 (16 binary 3x3 convs; 19 binary convs with ``variant="ovsw"``).

    Widths 64..512, [2, 2, 2, 2] basic blocks, one shortcut per block. Stem: FP conv3x3 ->
    BN, no activation. Init: kaiming_normal_.

    Args:
        variant: ``"recu"`` (parameter-free option-A shortcuts; head avgpool -> BatchNorm1d ->
            Linear) or ``"ovsw"`` (OvSW's ``cResNet18_1w1a``: *binary* 1x1 shortcut conv + BN
            where the shape changes; head avgpool -> BatchNorm2d -> 1x1 conv with bias).
    """
    check_choice("variant", variant, ("recu", "ovsw"))
    if variant == "ovsw":
        return CifarResNet(
            "basic",
            [2, 2, 2, 2],
            [64, 128, 256, 512],
            num_classes,
            False,
            "bn2d_conv",
            shortcut="binary_conv",
        )
    return CifarResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], num_classes, False, "bn1d")
