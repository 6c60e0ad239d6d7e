"""The method extension point: ``Method`` (a frozen dataclass of hyperparameters with optional
hooks), ``TrainState`` and the method registry.

A method says *how* binary layers binarize and which gradient rules apply; models say
*where* layers are binary. A method holds no runtime state: per-layer state lives in buffers
of the modules it builds (``build_layer_state``), so it moves with ``.to()``, is saved by
``state_dict()`` and is identical on every DDP rank.

Hook order inside one training step (see ``bnnkit/train/engine.py``)::

    on_step_start -> forward -> loss + extra_losses -> backward -> (AMP unscale)
    -> before_optimizer_step -> clip -> optimizer.step -> after_optimizer_step

Writing a method: one file under ``bnnkit/methods/``::

    @register_method
    @dataclass(frozen=True)
    class MyMethod(Method):
        name: ClassVar[str] = "mine"
        clip: float = 1.0

        def __post_init__(self):
            check_range(self, "clip", low=0.0, low_inclusive=False)

        def build_weight_binarizer(self, layer):
            return ClippedSTESign(self.clip)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn

from bnnkit._registry import Registry
from bnnkit.binarize import Scale
from bnnkit.nn import BinaryLayer

LayerList = Sequence[tuple[str, BinaryLayer]]
"""What every hook receives as ``layers``: ``binary_layers(model)``, (name, layer) pairs."""


@dataclass(frozen=True)
class TrainState:
    """Where training stands, given to the step hooks (immutable).

    Attributes:
        step: global optimizer step, 0-based, counted across epochs.
        epoch: current epoch, 0-based.
        epochs: total epochs of the current stage.
        progress: fraction of the stage done, in [0, 1].
        lr: current base learning rate (of the first parameter group).
    """

    step: int = 0
    epoch: int = 0
    epochs: int = 1
    progress: float = 0.0
    lr: float = 0.0


@dataclass(frozen=True)
class Method:
    """Base class of binarization methods. Every hook is optional.

    Subclasses are frozen dataclasses whose fields are the hyperparameters, validated in
    ``__post_init__`` (use :func:`check_range` / :func:`check_choice`), and set a class
    variable ``name``. Register them with :func:`register_method`.
    """

    name: ClassVar[str] = "base"

    # -- built once per binary layer by binarize_ ------------------------------------------------
    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module | None:
        """Module applied to the layer's latent weight, or ``None`` (full-precision weight)."""
        return None

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module | None:
        """Module applied to the layer's input, or ``None`` (full-precision input)."""
        return None

    def build_scale(self, layer: BinaryLayer) -> Scale | None:
        """Weight-side per-channel scale, or ``None``."""
        return None

    def build_layer_state(self, layer: BinaryLayer) -> nn.Module | None:
        """A module of per-layer buffers (trackers, previous signs), or ``None``.

        Built first: it is already ``layer.method_state`` when the other builders run.
        """
        return None

    # -- built once with the optimizer -----------------------------------------------------------
    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer.

        Each group is a dict with ``"name"`` and ``"params"``; optional keys
        ``"weight_decay"`` (overrides the recipe's decay rule for the group) and
        ``"lr_scale"`` (multiplies the base lr). The default is one group of all trainable
        parameters, to which the recipe's weight-decay rule applies.
        """
        return [{"name": "all", "params": [p for p in model.parameters() if p.requires_grad]}]

    # -- every step ------------------------------------------------------------------------------
    def on_step_start(self, layers: LayerList, state: TrainState) -> None:
        """Top of each step: write schedules in place into 0-d buffers."""

    def extra_losses(
        self, layers: LayerList, outputs: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        """Differentiable extra loss terms, added to the task loss and logged by name."""
        return {}

    def before_optimizer_step(self, layers: LayerList, state: TrainState) -> None:
        """After backward and AMP unscale, before clipping and ``optimizer.step``: edit grads."""

    def after_optimizer_step(self, layers: LayerList, state: TrainState) -> dict[str, Tensor]:
        """After ``optimizer.step``: trackers, clamps. Returns metrics as 0-d tensors (no sync)."""
        return {}

    # -- helpers ---------------------------------------------------------------------------------
    def fields(self) -> dict[str, Any]:
        """The hyperparameters as a dict (``name`` excluded); a composed method (a field
        holding another ``Method``, such as ``base``) appears as its own config dict."""
        return {
            f.name: v.to_config() if isinstance(v := getattr(self, f.name), Method) else v
            for f in dataclasses.fields(self)
        }

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., **fields}``, the form recipes use."""
        return {"name": self.name, **self.fields()}

    @property
    def binarizes_weights(self) -> bool:
        """Whether this method's layers use binary (two-valued per channel) weights."""
        return True


MethodT = TypeVar("MethodT", bound=type[Method])
METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: MethodT) -> MethodT:
    """Class decorator: register a :class:`Method` subclass under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method expects a Method subclass, got {cls!r}")
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} must be decorated with @dataclass(frozen=True)")
    METHODS.register(cls.name, cls)
    return cls


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return METHODS.names()


def get_method(spec: str | Method | dict[str, Any], **fields: Any) -> Method:
    """Build a method from its name and hyperparameters.

    Args:
        spec: a registered name, a ``Method`` (returned, with ``fields`` replaced if given),
            or a dict ``{"name": ..., **fields}`` as in recipes.
        **fields: hyperparameters; unknown ones raise a ``ValueError`` listing the valid ones.

    Example:
        >>> get_method("irnet", t_min=1e-3)
    """
    if isinstance(spec, Method):
        return dataclasses.replace(spec, **fields) if fields else spec
    if isinstance(spec, dict):
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"a method dict needs a 'name' key; valid names: {list_methods()}")
        name = spec.pop("name")
        return get_method(name, **{**spec, **fields})
    cls = METHODS.get(spec)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(
            f"method {cls.name!r} has no field(s) {unknown}; "
            f"valid fields: {valid if valid else 'none (it takes no hyperparameters)'}"
        )
    return cls(**fields)


# -- validation helpers for __post_init__ -----------------------------------------------------------


def check_range(
    method: Method,
    field: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``field`` and its allowed range if the value is outside it."""
    value = getattr(method, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{method.name}.{field} must be a number, got {value!r}")
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        raise ValueError(f"{method.name}.{field} = {value!r} is out of range; allowed: {lo}, {hi}")


def check_choice(method: Method, field: str, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` naming ``field`` and the valid choices if the value is not one."""
    choices = tuple(choices)
    value = getattr(method, field)
    if value not in choices:
        raise ValueError(f"{method.name}.{field} = {value!r} is not valid; choose one of {choices}")


def resolve_base(method: Method, field: str = "base") -> None:
    """In ``__post_init__``: turn ``method.<field>`` (a name, dict or Method) into a Method.

    Raises ``ValueError`` for an unknown method or a method composed with itself.
    """
    value = getattr(method, field)
    if value is None:
        return
    base = get_method(value)
    if base.name == method.name:
        raise ValueError(f"{method.name}.{field} cannot be {method.name} itself")
    object.__setattr__(method, field, base)


def check_ordered(method: Method, low_field: str, high_field: str) -> None:
    """Raise ``ValueError`` unless ``low_field <= high_field``."""
    lo, hi = getattr(method, low_field), getattr(method, high_field)
    if lo > hi:
        raise ValueError(
            f"{method.name}: {low_field} ({lo!r}) must not exceed {high_field} ({hi!r})"
        )
