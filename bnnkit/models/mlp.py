"""A small binary MLP for the bundled digits data set (and any flat input)."""

from __future__ import annotations

from torch import Tensor, nn

from bnnkit.errors import ConfigError
from bnnkit.models.registry import register_model
from bnnkit.nn import BinaryLinear


class MLP(nn.Module):
    """Flatten -> Linear (FP) -> BN -> hardtanh -> ``depth`` x [BinaryLinear -> BN -> hardtanh]
    -> Linear (FP); without batch norm the binary layers get a bias instead."""

    def __init__(
        self, num_classes: int, in_features: int, hidden: int, depth: int, batch_norm: bool = True
    ) -> None:
        super().__init__()
        for name, value in (("depth", depth), ("hidden", hidden), ("in_features", in_features)):
            if value < 1:
                raise ConfigError("is not valid for model mlp", location=(name,), value=value,
                                  allowed="an integer >= 1")  # fmt: skip
        self.flatten = nn.Flatten()
        self.fc_in = nn.Linear(in_features, hidden)

        def norm() -> nn.Module:
            return nn.BatchNorm1d(hidden) if batch_norm else nn.Identity()

        self.bn_in = norm()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [BinaryLinear(hidden, hidden, bias=not batch_norm), norm(), nn.Hardtanh()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.hardtanh(self.bn_in(self.fc_in(self.flatten(x))))
        return self.fc(self.body(x))


@register_model(input_size=(64,), num_classes=10, dataset="digits")
def mlp(
    num_classes: int = 10,
    in_features: int = 64,
    hidden: int = 256,
    depth: int = 2,
    batch_norm: bool = True,
) -> MLP:
    """Binary MLP: FP input layer, ``depth`` binary hidden layers of width ``hidden``, FP output.

    Defaults fit the 8x8 UCI digits (64 features) bundled with scikit-learn. With
    ``batch_norm=False`` the BatchNorms are replaced by biases (a model whose training does not
    depend on how the batch is split across processes).
    """
    return MLP(num_classes, in_features, hidden, depth, batch_norm)
