"""Binarization methods: the ``Method`` base, its registry, composition, ``binarize_`` and the
methods (one module each; importing this package registers them)."""

from bnnkit.methods import (  # noqa: F401
    adabin,
    biper,
    bireal,
    bop,
    full_precision,
    irnet,
    ovsw,
    rbnn,
    reactnet,
    rebnn,
    recu,
    ste,
    xnor,
)
from bnnkit.methods.attach import BinarizeReport, binarize_
from bnnkit.methods.base import (
    Method,
    TrainState,
    check_choice,
    check_fields,
    check_ordered,
    check_range,
    get_method,
    list_methods,
    method_class,
    register_method,
    rule_methods,
)
from bnnkit.methods.compose import Composed, compose
from bnnkit.nn import LayerList, binary_layers

__all__ = [
    "BinarizeReport",
    "Composed",
    "LayerList",
    "Method",
    "TrainState",
    "binarize_",
    "binary_layers",
    "check_choice",
    "check_fields",
    "check_ordered",
    "check_range",
    "compose",
    "get_method",
    "list_methods",
    "method_class",
    "register_method",
    "rule_methods",
]
