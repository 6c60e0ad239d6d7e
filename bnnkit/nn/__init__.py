"""Binary layers, the per-layer sign history, and ReActNet's learnable shifts."""

from bnnkit.nn.history import SignHistory, SignHistoryError
from bnnkit.nn.layers import (
    BinaryConv2d,
    BinaryLayer,
    BinaryLinear,
    LayerList,
    binary_layers,
    is_binary_layer,
    reset_sign_history,
    update_sign_history,
)
from bnnkit.nn.react import LearnableBias, RPReLU, RSign

__all__ = [
    "BinaryConv2d",
    "BinaryLayer",
    "BinaryLinear",
    "LayerList",
    "LearnableBias",
    "RPReLU",
    "RSign",
    "SignHistory",
    "SignHistoryError",
    "binary_layers",
    "is_binary_layer",
    "reset_sign_history",
    "update_sign_history",
]
