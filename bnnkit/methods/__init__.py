"""Binarization methods: the ``Method`` base, its registry, ``binarize_`` and the methods.

Importing this package registers every built-in method (one module each).
"""

from bnnkit.methods import (  # noqa: F401
    bireal,
    full_precision,
    irnet,
    ovsw,
    reactnet,
    rebnn,
    recu,
    ste,
    xnor,
)
from bnnkit.methods.attach import BinarizeReport, binarize_, binary_layers
from bnnkit.methods.base import (
    LayerList,
    Method,
    TrainState,
    check_choice,
    check_ordered,
    check_range,
    get_method,
    list_methods,
    register_method,
    resolve_base,
)

__all__ = [
    "BinarizeReport",
    "LayerList",
    "Method",
    "TrainState",
    "binarize_",
    "binary_layers",
    "check_choice",
    "check_ordered",
    "check_range",
    "get_method",
    "list_methods",
    "register_method",
    "resolve_base",
]
