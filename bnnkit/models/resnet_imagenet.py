"""One-stage ImageNet ResNet-18/34 of the ReCU / OvSW / IR-Net code (Bi-Real 2-conv blocks)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from bnnkit.models.common import BiRealBlock, kaiming_init_convs, make_stages
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


class ImageNetResNet(nn.Module):
    """Stem FP conv7x7/2 -> BN -> hardtanh -> maxpool; stages; avgpool -> BN1d -> FC."""

    def __init__(self, layers: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = make_stages(_block, layers, [64, 128, 256, 512], 64)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.bn_head = nn.BatchNorm1d(512)
        self.fc = nn.Linear(512, num_classes)
        kaiming_init_convs(self)
        for m in self.modules():  # ReCU/OvSW: every BatchNorm2d weight starts at 1e-8
            if isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1e-8)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.hardtanh(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.bn_head(self.avgpool(x).flatten(1)))


@register_model(input_size=(3, 224, 224), num_classes=1000, dataset="imagenet")
def resnet18(num_classes: int = 1000) -> ImageNetResNet:
    """One-stage ImageNet ResNet-18 (ReCU / OvSW / IR-Net): [2, 2, 2, 2] Bi-Real 2-conv blocks,
    16 binary 3x3 convs; stem, 1x1 downsample and FC in full precision; BN2d weights init 1e-8."""
    return ImageNetResNet([2, 2, 2, 2], num_classes)


@register_model(input_size=(3, 224, 224), num_classes=1000, dataset="imagenet")
def resnet34(num_classes: int = 1000) -> ImageNetResNet:
    """One-stage ImageNet ResNet-34: [3, 4, 6, 3] Bi-Real 2-conv blocks, 32 binary 3x3 convs."""
    return ImageNetResNet([3, 4, 6, 3], num_classes)
