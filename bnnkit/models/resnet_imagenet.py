"""One-stage ImageNet ResNet-18/34 of the ReCU / OvSW / IR-Net code (Bi-Real 2-conv blocks),
and AdaBin's variant of them."""

from __future__ import annotations

import math

from torch import Tensor, nn

from bnnkit.models.common import (
    BiRealBlock,
    check_choice,
    hardtanh,
    kaiming_init_convs,
    make_stages,
    maxout,
)
from bnnkit.models.registry import register_model


def _block(cin: int, cout: int, stride: int) -> BiRealBlock:
    """Bi-Real 2-conv block; where the shape changes the first add uses an FP downsample
    (conv1x1 stride 2 -> BN, no avgpool)."""
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
        )
    return BiRealBlock(cin, cout, stride, shortcut)


def _adabin_block(cin: int, cout: int, stride: int) -> BiRealBlock:
    """AdaBin's block: Maxout, and an "avg-down" downsample where the shape changes
    (AvgPool2d(2, ceil_mode, count_include_pad False) -> FP conv1x1 stride 1 -> BN)."""
    shortcut = None
    if stride != 1 or cin != cout:
        pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        shortcut = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
    return BiRealBlock(cin, cout, stride, shortcut, maxout)


class ImageNetResNet(nn.Module):
    """Stem FP conv7x7/2 -> BN -> hardtanh -> maxpool; stages; avgpool -> BN1d -> FC.

    ``variant="adabin"``: Maxout in place of hardtanh (stem and blocks), avg-down downsample,
    conv init N(0, 2/(k^2 C_out)) (fan-out Kaiming), BN and FC at PyTorch's defaults.
    """

    def __init__(self, layers: list[int], num_classes: int = 1000, variant: str = "recu") -> None:
        super().__init__()
        adabin = variant == "adabin"
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.stem_act = (maxout if adabin else hardtanh)(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        block = _adabin_block if adabin else _block
        stages = make_stages(block, layers, [64, 128, 256, 512], 64)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.bn_head = nn.BatchNorm1d(512)
        self.fc = nn.Linear(512, num_classes)
        if adabin:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            return
        kaiming_init_convs(self)
        for m in self.modules():  # ReCU/OvSW: every BatchNorm2d weight starts at 1e-8
            if isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1e-8)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.stem_act(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.bn_head(self.avgpool(x).flatten(1)))


_VARIANTS = ("recu", "adabin")


@register_model(input_size=(3, 224, 224), num_classes=1000, dataset="imagenet")
def resnet18(num_classes: int = 1000, variant: str = "recu") -> ImageNetResNet:
    """One-stage ImageNet ResNet-18 (ReCU / OvSW / IR-Net): [2, 2, 2, 2] Bi-Real 2-conv blocks,
    16 binary 3x3 convs; stem, 1x1 downsample and FC in full precision; BN2d weights init 1e-8.
    ``variant="adabin"``: AdaBin's ``resnet18_1w1a`` (see :class:`ImageNetResNet`)."""
    check_choice("variant", variant, _VARIANTS)
    return ImageNetResNet([2, 2, 2, 2], num_classes, variant)


@register_model(input_size=(3, 224, 224), num_classes=1000, dataset="imagenet")
def resnet34(num_classes: int = 1000, variant: str = "recu") -> ImageNetResNet:
    """One-stage ImageNet ResNet-34: [3, 4, 6, 3] Bi-Real 2-conv blocks, 32 binary 3x3 convs.
    ``variant="adabin"``: AdaBin's ``resnet34_1w1a``."""
    check_choice("variant", variant, _VARIANTS)
    return ImageNetResNet([3, 4, 6, 3], num_classes, variant)
