"""Binary layers, the per-layer sign history, ReActNet's learnable shifts and RPReLU, and
AdaBin's Maxout."""

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
from bnnkit.nn.react import LearnableBias, Maxout, RPReLU, RSign

__all__ = [
    "BinaryConv2d",
    "BinaryLayer",
    "BinaryLinear",
    "LayerList",
    "LearnableBias",
    "Maxout",
    "RPReLU",
    "RSign",
    "SignHistory",
    "SignHistoryError",
    "binary_layers",
    "is_binary_layer",
    "reset_sign_history",
    "update_sign_history",
]
