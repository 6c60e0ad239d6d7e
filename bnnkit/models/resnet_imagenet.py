"""One-stage ImageNet ResNet-18/34 of the ReCU / OvSW / IR-Net code (Bi-Real 2-conv blocks)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from bnnkit.models.common import binary_conv3x3, kaiming_init_convs
from bnnkit.models.registry import register_model


class BiRealBasicBlock(nn.Module):
    """Two binary 3x3 convs, each followed by BN, a residual add and hardtanh.

    ``out = hardtanh(BN1(conv1(x)) + downsample(x) or x)``; ``out = hardtanh(BN2(conv2(out)) + out)``.
    Downsample (FP): conv1x1 stride 2 -> BN (no avgpool).
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = binary_conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.conv2 = binary_conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.hardtanh(self.bn1(self.conv1(x)) + identity)
        return F.hardtanh(self.bn2(self.conv2(out)) + out)


class ImageNetResNet(nn.Module):
    """Stem FP conv7x7/2 -> BN -> hardtanh -> maxpool; stages; avgpool -> BN1d -> FC."""

    def __init__(self, layers: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, cin = [], 64
        for i, (n, w) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(BiRealBasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            stages.append(nn.Sequential(*blocks))
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
