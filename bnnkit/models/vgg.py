"""VGG-Small for CIFAR (ReCU / IR-Net / OvSW code), 5 binary convs."""

from __future__ import annotations

import math

from torch import Tensor, nn

from bnnkit.models.common import Activation, binary_conv3x3, check_choice, hardtanh, maxout
from bnnkit.models.registry import register_model


class VGGSmall(nn.Module):
    """``conv0 (FP) -> BN -> hardtanh``, five binary stages, flatten -> FC (FP).

    Stage order is conv -> [maxpool] -> BN -> activation (pool *before* BN, as in the code).
    """

    CFG = (
        (128, 128, True),
        (128, 256, False),
        (256, 256, True),
        (256, 512, False),
        (512, 512, True),
    )

    def __init__(
        self, num_classes: int = 10, last_activation: str = "hardtanh", act: Activation = hardtanh
    ) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 128, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(128)
        self.act0 = act(128)
        stages = []
        for i, (cin, cout, pool) in enumerate(self.CFG):
            last = i == len(self.CFG) - 1
            act_i = nn.PReLU(cout) if (last and last_activation == "prelu") else act(cout)
            parts = [binary_conv3x3(cin, cout)]
            if pool:
                parts.append(nn.MaxPool2d(2))
            parts += [nn.BatchNorm2d(cout), act_i]
            stages.append(nn.Sequential(*parts))
        self.features = nn.Sequential(*stages)
        self.fc = nn.Linear(512 * 4 * 4, num_classes)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act0(self.bn0(self.conv0(x)))
        return self.fc(self.features(x).flatten(1))


@register_model(input_size=(3, 32, 32), num_classes=10, dataset="cifar")
def vgg_small(
    num_classes: int = 10, last_activation: str = "hardtanh", variant: str = "recu"
) -> VGGSmall:
    """VGG-Small (5 binary 3x3 convs 128-128-256-256-512-512), 32x32 input.

    Init: conv N(0, 2/(k^2 C_out)), BN 1/0, FC N(0, 0.01^2) with zero bias.

    Args:
        last_activation: ``"hardtanh"`` (ReCU) or ``"prelu"`` (OvSW: PReLU(512) after bn5).
        variant: ``"recu"`` or ``"adabin"``: :func:`~bnnkit.models.common.maxout` in place of
            every hardtanh. AdaBin released no VGG-Small code, so this topology is an
            assumption (docs/specs/adabin.md section 4.5), not the paper's verified network.
    """
    check_choice("last_activation", last_activation, ("hardtanh", "prelu"))
    check_choice("variant", variant, ("recu", "adabin"))
    return VGGSmall(num_classes, last_activation, maxout if variant == "adabin" else hardtanh)
