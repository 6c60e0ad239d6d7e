"""Model registry and model families. Importing this package registers every model."""

from bnnkit.models import mlp, reactnet, resnet_cifar, resnet_imagenet, vgg  # noqa: F401
from bnnkit.models.registry import (
    ModelInfo,
    create_model,
    list_models,
    model_info,
    model_options,
    register_model,
)

__all__ = [
    "ModelInfo",
    "create_model",
    "list_models",
    "model_info",
    "model_options",
    "register_model",
]
