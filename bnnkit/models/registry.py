"""Model registry (timm-style): ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from bnnkit._registry import Registry
from bnnkit.errors import ConfigError


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of a model.

    Attributes:
        name: registry name.
        fn: the constructor, ``fn(num_classes=..., **kw) -> nn.Module``.
        input_size: default input ``(C, H, W)`` (or ``(features,)``), without batch.
        num_classes: default number of classes.
        dataset: the data set family it is built for (``"cifar"``, ``"imagenet"``, ``"digits"``).
    """

    name: str
    fn: Callable[..., nn.Module]
    input_size: tuple[int, ...]
    num_classes: int
    dataset: str


MODELS: Registry[ModelInfo] = Registry("model")


def register_model(
    name: str | None = None,
    *,
    input_size: tuple[int, ...] = (3, 32, 32),
    num_classes: int = 10,
    dataset: str = "cifar",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model constructor under ``name`` (default: the function name)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        MODELS.register(key, ModelInfo(key, fn, tuple(input_size), num_classes, dataset))
        return fn

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def model_info(name: str) -> ModelInfo:
    """Registry entry of ``name`` (a ``ConfigError`` listing valid names if unknown)."""
    return MODELS.get(name)


def model_options(name: str) -> list[str]:
    """The keyword options of model ``name`` (``num_classes`` excluded)."""
    return [p for p in inspect.signature(MODELS.get(name).fn).parameters if p != "num_classes"]


def create_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        num_classes: output classes (default: the model's, e.g. 10 for CIFAR models).
        **kwargs: model options (see the model function's docstring).

    The model's ``model_spec`` attribute records ``name``, ``num_classes`` and ``options``
    (what :func:`bnnkit.export.save_packed` writes to rebuild it).

    Raises:
        ConfigError: unknown model name or option (the message lists the valid ones).
    """
    info = MODELS.get(name)
    valid = model_options(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(
            f"not an option of model {name}", location=(unknown[0],), allowed=", ".join(valid)
        )
    n = info.num_classes if num_classes is None else num_classes
    if isinstance(n, bool) or not (isinstance(n, int) and n >= 1):
        raise ConfigError("must be a positive int", location=("num_classes",), value=num_classes)
    model = info.fn(num_classes=n, **kwargs)
    # how to build it again (timm's ``pretrained_cfg`` idea): checkpoints and packed exports
    model.model_spec = {"name": name, "num_classes": n, "options": dict(kwargs)}
    return model
