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

from typing import TYPE_CHECKING, Any

from bnnkit._version import __version__
from bnnkit.errors import BnnkitError, ConfigError

# The rest loads on first use (PEP 562), so that `bnnkit --help` does not import torch.
_LAZY = {
    "export": "bnnkit.export",
    "ModelSummary": "bnnkit.diagnostics", "summary": "bnnkit.diagnostics",
    "Method": "bnnkit.methods", "TrainState": "bnnkit.methods", "binarize_": "bnnkit.methods",
    "binary_layers": "bnnkit.methods", "compose": "bnnkit.methods",
    "get_method": "bnnkit.methods", "list_methods": "bnnkit.methods",
    "register_method": "bnnkit.methods",
    "create_model": "bnnkit.models", "list_models": "bnnkit.models",
    "model_info": "bnnkit.models", "register_model": "bnnkit.models",
    "RunResult": "bnnkit.runs", "train": "bnnkit.runs",
}  # fmt: skip

if TYPE_CHECKING:  # what type checkers and IDEs see
    from bnnkit import export
    from bnnkit.diagnostics import ModelSummary, summary
    from bnnkit.methods import (
        Method,
        TrainState,
        binarize_,
        binary_layers,
        compose,
        get_method,  # fmt: skip
        list_methods,
        register_method,
    )
    from bnnkit.models import create_model, list_models, model_info, register_model
    from bnnkit.runs import RunResult, train


_SUBPACKAGES = ("binarize", "config", "data", "diagnostics", "export", "methods", "models", "nn",
                "runs", "training")  # ``bnnkit.nn.BinaryConv2d`` after a bare ``import bnnkit``  # fmt: skip


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBPACKAGES:
        module = importlib.import_module(f"bnnkit.{name}")
        globals()[name] = module
        return module
    if name not in _LAZY:
        raise AttributeError(f"module 'bnnkit' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if name == "export" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))


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
