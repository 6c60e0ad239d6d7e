"""Binary layers and ReActNet's learnable shifts."""

from bnnkit.nn.layers import BinaryConv2d, BinaryLayer, BinaryLinear, is_binary_layer
from bnnkit.nn.react import LearnableBias, RPReLU, RSign

__all__ = [
    "BinaryConv2d",
    "BinaryLayer",
    "BinaryLinear",
    "LearnableBias",
    "RPReLU",
    "RSign",
    "is_binary_layer",
]
