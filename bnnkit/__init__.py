"""bnnkit: train, diagnose and ship accurate binary neural networks with PyTorch.

Public API::

    import bnnkit
    bnnkit.list_models(); bnnkit.list_methods()
    model = bnnkit.create_model("resnet20", num_classes=10)
    bnnkit.binarize_(model, bnnkit.get_method("reactnet"))
    bnnkit.summary(model, input_size=(3, 32, 32))
    result = bnnkit.train("cifar10/resnet20_reactnet", training={"epochs": 1})
    packed = bnnkit.export.convert(model); bnnkit.export.save_packed(model, "m.bnn")
"""

from bnnkit import export
from bnnkit._version import __version__
from bnnkit.diagnostics import ModelSummary, summary
from bnnkit.errors import BnnkitError, ConfigError
from bnnkit.methods import (
    Method,
    TrainState,
    binarize_,
    binary_layers,
    compose,
    get_method,
    list_methods,
    register_method,
)
from bnnkit.models import create_model, list_models, model_info, register_model
from bnnkit.runs import RunResult, train

__all__ = [
    "BnnkitError",
    "ConfigError",
    "Method",
    "ModelSummary",
    "RunResult",
    "TrainState",
    "__version__",
    "binarize_",
    "binary_layers",
    "compose",
    "create_model",
    "export",
    "get_method",
    "list_methods",
    "list_models",
    "model_info",
    "register_method",
    "register_model",
    "summary",
    "train",
]
