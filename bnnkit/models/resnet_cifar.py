"""CIFAR ResNets of the ReCU / IR-Net / OvSW code: ``resnet20`` and ``resnet18_cifar``.

Binary layers are ``BinaryConv2d`` without binarizers; :func:`bnnkit.binarize_` attaches a
method. The stem conv and the classifier stay full precision, as in the papers.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from bnnkit.models.common import (
    Activation,
    BiRealBlock,
    OptionAShortcut,
    binary_conv3x3,
    check_choice,
    hardtanh,
    kaiming_init_convs,
    make_stages,
    maxout,
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
    """Stem (FP 3x3 conv + BN [+ nonlinearity]) -> stages -> head.

    ``shortcut`` (where a block changes shape): ``"A"`` (avgpool + zero channels, ReCU),
    ``"A_subsample"`` (strided subsampling + zero channels, AdaBin), ``"conv"`` (FP conv1x1 +
    BN) or ``"binary_conv"`` (binary conv1x1 + BN, OvSW's basic blocks). ``init``:
    ``"kaiming"`` (``kaiming_normal_`` on the convs), ``"kaiming_all"`` (and on the Linear,
    AdaBin's ResNet-20) or ``"default"`` (PyTorch's); ``bn_weight``: the BatchNorm2d weights'
    initial value (PyTorch's 1 if ``None``).
    """

    def __init__(
        self,
        block: str,
        layers: list[int],
        widths: list[int],
        num_classes: int,
        stem_act: bool,
        head: str,
        shortcut: str = "A",
        act: Activation = hardtanh,
        init: str = "kaiming",
        bn_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.stem_act = act(widths[0]) if stem_act else None

        def make_block(cin: int, cout: int, stride: int) -> nn.Module:
            if block == "bireal":
                changes = stride != 1 or cin != cout
                return BiRealBlock(cin, cout, stride, _shortcut(shortcut, cin, cout, stride) if changes else None, act)  # fmt: skip
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
        if init != "default":
            kaiming_init_convs(self)
        if init == "kaiming_all":
            nn.init.kaiming_normal_(self.fc.weight)
        if bn_weight is not None:  # RBNN's ResNet-20: every BatchNorm2d weight starts at 1e-8
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, bn_weight)
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(x))
        if self.stem_act is not None:
            x = self.stem_act(x)
        x = self.pool(self.layers(x))
        if self.head == "bn2d_conv":
            return self.fc(self.bn_head(x)).flatten(1)
        return self.fc(self.bn_head(x.flatten(1)))


def _shortcut(kind: str, cin: int, cout: int, stride: int) -> nn.Module:
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))  # fmt: skip
    return OptionAShortcut(cin, cout, stride, subsample=kind == "A_subsample")


@register_model(input_size=(3, 32, 32), num_classes=10, dataset="cifar")
def resnet20(num_classes: int = 10, variant: str = "recu") -> CifarResNet:
    """CIFAR ResNet-20, Bi-Real variant of ReCU / IR-Net / OvSW (18 binary 3x3 convs).

    Widths 16/32/64, [3, 3, 3] blocks, a shortcut around each binary conv (option A, avgpool +
    zero-pad, where the shape changes). Stem: FP conv3x3 -> BN -> hardtanh. Head: global
    avgpool -> BatchNorm1d(64) -> Linear (FP). Init: kaiming_normal_ on every conv.

    Args:
        variant: ``"recu"`` (the above) or ``"adabin"`` (AdaBin's ``resnet20_1w1a``: Maxout
            after the stem BN and after every residual add instead of hardtanh, option A by
            strided subsampling ``x[:, :, ::2, ::2]``, kaiming_normal_ on the Linear too) or
            ``"rbnn"`` (RBNN's ``resnet20_bireal_1w1a``: hardtanh, option A by subsampling,
            kaiming_normal_ on the Linear too, every BatchNorm2d weight initialised to 1e-8).
    """
    check_choice("variant", variant, ("recu", "adabin", "rbnn"))
    if variant == "adabin":
        return CifarResNet("bireal", [3, 3, 3], [16, 32, 64], num_classes, True, "bn1d",
                           shortcut="A_subsample", act=maxout, init="kaiming_all")  # fmt: skip
    if variant == "rbnn":
        return CifarResNet("bireal", [3, 3, 3], [16, 32, 64], num_classes, True, "bn1d",
                           shortcut="A_subsample", init="kaiming_all", bn_weight=1e-8)  # fmt: skip
    return CifarResNet("bireal", [3, 3, 3], [16, 32, 64], num_classes, True, "bn1d")


@register_model(input_size=(3, 32, 32), num_classes=10, dataset="cifar")
def resnet18_cifar(num_classes: int = 10, variant: str = "recu") -> CifarResNet:
    """CIFAR ResNet-18 (16 binary 3x3 convs; 19 binary convs with ``variant="ovsw"``).

    Widths 64..512, [2, 2, 2, 2] basic blocks, one shortcut per block. Stem: FP conv3x3 ->
    BN, no activation. Init: kaiming_normal_.

    Args:
        variant: ``"recu"`` (parameter-free option-A shortcuts; head avgpool -> BatchNorm1d ->
            Linear), ``"ovsw"`` (OvSW's ``cResNet18_1w1a``: *binary* 1x1 shortcut conv + BN
            where the shape changes; head avgpool -> BatchNorm2d -> 1x1 conv with bias) or
            ``"adabin"`` (AdaBin's ``resnet18_1w1a``: Bi-Real 2-conv blocks, a shortcut per
            conv, FP conv1x1 + BN where the shape changes, Maxout after the stem BN and every
            add, head avgpool -> BatchNorm1d -> Linear, PyTorch's default init) or ``"rbnn"``
            (RBNN's ``resnet18_1w1a``: basic blocks with a *binary* 1x1 shortcut conv + BN, head
            avgpool -> BatchNorm1d -> Linear, PyTorch's default init).
    """
    check_choice("variant", variant, ("recu", "ovsw", "adabin", "rbnn"))
    widths = [64, 128, 256, 512]
    if variant == "adabin":
        return CifarResNet("bireal", [2, 2, 2, 2], widths, num_classes, True, "bn1d",
                           shortcut="conv", act=maxout, init="default")  # fmt: skip
    if variant == "rbnn":
        return CifarResNet("basic", [2, 2, 2, 2], widths, num_classes, False, "bn1d",
                           shortcut="binary_conv", init="default")  # fmt: skip
    if variant == "ovsw":
        return CifarResNet("basic", [2, 2, 2, 2], widths, num_classes, False, "bn2d_conv",
                           shortcut="binary_conv")  # fmt: skip
    return CifarResNet("basic", [2, 2, 2, 2], widths, num_classes, False, "bn1d")
