"""The method extension point: ``Method`` (a frozen dataclass of hyperparameters with optional
hooks), ``TrainState`` and the method registry.

A method says *how* binary layers binarize and which gradient rules apply; models say
*where* layers are binary. A method holds no runtime state: per-layer state lives in buffers
of the modules it builds (``build_layer_state``, kept in ``layer.method_state[<name>]``), so it
moves with ``.to()``, is saved by ``state_dict()`` and is identical on every DDP rank.

Hook order inside one training step (see :mod:`bnnkit.training.engine`)::

    on_step_start -> forward -> loss + extra_losses -> backward -> (AMP unscale)
    -> before_optimizer_step -> clip -> optimizer.step -> update_sign_history
    -> after_optimizer_step

Methods compose: ``{name: ovsw, base: recu}`` is OvSW's training rules on ReCU's binarizers
(:mod:`bnnkit.methods.compose` says what runs in which order, and which pairs are refused).

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn

from bnnkit._registry import Registry
from bnnkit.binarize import Scale
from bnnkit.errors import ConfigError
from bnnkit.nn import BinaryLayer, LayerList, SignHistory

StateT = TypeVar("StateT", bound=nn.Module)


@dataclass(frozen=True)
class TrainState:
    """Where training stands, given to the step hooks (immutable).

    Attributes:
        step: global optimizer step, 0-based, counted across epochs.
        epoch: current epoch, 0-based.
        epochs: total epochs of the current stage.
        progress: fraction of the stage done, in [0, 1].
        lr: current base learning rate (of the first parameter group).
        batch: the batch index within the epoch, 0-based (0 at the epoch's first step; a run
            resumed mid-epoch starts at its checkpoint's batch).
    """

    step: int = 0
    epoch: int = 0
    epochs: int = 1
    progress: float = 0.0
    lr: float = 0.0
    batch: int = 0


@dataclass(frozen=True)
class Method:
    """Base class of binarization methods. Every hook is optional.

    Subclasses are frozen dataclasses whose fields are the hyperparameters, validated in
    ``__post_init__`` (use :func:`check_range` / :func:`check_choice`), and set a class
    variable ``name``. Register them with :func:`register_method`.

    Composition (:mod:`bnnkit.methods.compose`): a method whose contribution on top of another
    method's binarizers is its own training rules (state, gradient rules, metrics) sets
    ``adds_rules = True``; only such a method can sit on a ``base``. Its per-layer state lives
    in ``layer.method_state[<name>]``, read with :meth:`state_of`, so parts never collide.
    """

    name: ClassVar[str] = "base"
    adds_rules: ClassVar[bool] = False

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

    def wrap_scale(self, layer: BinaryLayer, scale: Scale | None) -> Scale | None:
        """In a composition, every part above the base may wrap the scale the base built
        (ReBNN records the gradient of the binarized weight this way). Default: unchanged."""
        return scale

    def build_layer_state(self, layer: BinaryLayer) -> nn.Module | None:
        """A module of per-layer buffers, or ``None``; kept as ``layer.method_state[name]``.

        Built first: it is already in ``layer.method_state`` when the other builders run.
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
        """After ``optimizer.step`` and the sign-history update: trackers, clamps (that keep
        signs). Returns metrics as 0-d tensors named ``<method>/<metric>`` (no host sync)."""
        return {}

    # -- composition -----------------------------------------------------------------------------
    def refuses_base(self, base: Method) -> str | None:
        """Why this method cannot sit on ``base`` (see :mod:`bnnkit.methods.compose`), or
        ``None`` when it can. Override to add a method's own refusals (call ``super()``)."""
        if not self.adds_rules:
            return (
                f"{self.name} says how layers binarize (its binarizers, scale and the hooks "
                "that drive them), and a composed method takes those from its base; only "
                f"methods that add training rules can sit on a base: {', '.join(rule_methods())}"
            )
        if not base.binarizes_weights:
            return f"{self.name}'s rules act on binary weights, and {base.name} keeps them float"
        if base.latent_free:
            return (f"{base.name} has no latent weights (its optimizer flips ±1 weights), and "
                    f"{self.name}'s rules act on latent magnitudes")  # fmt: skip
        if not base.monotone_weight_sign:
            return (f"{base.name}'s weight sign is {base.weight_sign_kind}, and "
                    f"{self.name}'s rules act through |w|, which does not measure the distance "
                    "to a sign change there")  # fmt: skip
        return None

    def refuses_previous(self, previous: Method) -> str | None:
        """Why this method cannot start from the weights of a stage trained with ``previous``
        (a multi-stage recipe), or ``None``. Checked when a recipe is validated."""
        return None

    # -- helpers ---------------------------------------------------------------------------------
    def parts(self) -> tuple[Method, ...]:
        """The methods this one is made of, base first (a plain method: itself)."""
        return (self,)

    def state_of(self, layer: BinaryLayer) -> nn.Module | None:
        """This method's per-layer state on ``layer`` (``layer.method_state[self.name]``)."""
        states = layer.method_state
        return states[self.name] if states is not None and self.name in states else None

    def tracked(
        self, layers: LayerList, state_type: type[StateT]
    ) -> list[tuple[BinaryLayer, StateT, SignHistory]]:
        """``(layer, this method's state, the layer's sign history)`` of every layer that has
        a state of ``state_type`` and a sign history (what the sign-reading rules act on)."""
        out = []
        for _, layer in layers:
            st = self.state_of(layer)
            if isinstance(st, state_type) and layer.sign_history is not None:
                out.append((layer, st, layer.sign_history))
        return out

    def fields(self) -> dict[str, Any]:
        """The hyperparameters as a dict (``name`` excluded)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., **fields}``, the form recipes use."""
        return {"name": self.name, **self.fields()}

    def with_fields(self, **fields: Any) -> Method:
        """A copy with some hyperparameters replaced (validated again)."""
        check_fields(type(self), fields)
        return dataclasses.replace(self, **fields)

    @property
    def binarizes_weights(self) -> bool:
        """Whether this method's layers use binary (two-valued per channel) weights."""
        return True

    @property
    def latent_free(self) -> bool:
        """Whether the layers' weights are the binary weights themselves, updated by a binary
        optimizer (Bop), not latent reals."""
        return False

    @property
    def monotone_weight_sign(self) -> bool:
        """Whether a binary weight's sign is a monotone function of the latent weight (so |w|
        measures the distance to a flip). False for BiPer's periodic sign(sin(omega w)) and
        RBNN's rotated weights."""
        return True

    @property
    def weight_sign_kind(self) -> str:
        """How a binary weight's sign follows from the latent weights, in words (the
        composition refusals quote it)."""
        return "monotone in w"

    @property
    def symmetric_weight_set(self) -> bool:
        """Whether each output channel's binary weights are ±α (symmetric about 0). False for
        AdaBin's affine {β − α, β + α}."""
        return True


MethodT = TypeVar("MethodT", bound=type[Method])
METHODS: Registry[type[Method]] = Registry("method")


PartT = TypeVar("PartT")


def layers_with(
    layers: LayerList, kind: type[PartT], part: str = "weight_binarizer"
) -> list[tuple[BinaryLayer, PartT]]:
    """``(layer, binarizer)`` for every layer whose ``part`` (``"weight_binarizer"`` or
    ``"input_binarizer"``) is a ``kind``: the layers a method's hooks act on."""
    return [(m, b) for _, m in layers if isinstance(b := getattr(m, part), kind)]


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


def rule_methods() -> list[str]:
    """Registered methods that can sit on a base (``adds_rules``), sorted."""
    return [n for n in list_methods() if METHODS.get(n).adds_rules]


def method_class(name: str) -> type[Method]:
    """The registered class of ``name`` (a :class:`ConfigError` listing the names if unknown)."""
    return METHODS.get(name)


def check_fields(cls: type[Method], fields: Iterable[str]) -> None:
    """Raise a :class:`ConfigError` naming the first field ``cls`` does not have."""
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in fields:
        if key not in valid:
            raise ConfigError(
                f"not a hyperparameter of {cls.name}",
                location=(key,),
                allowed=", ".join(valid) if valid else "none (it takes no hyperparameters)",
            )


def get_method(spec: str | Method | dict[str, Any], **fields: Any) -> Method:
    """Build a method from its name and hyperparameters.

    Args:
        spec: a registered name, a ``Method`` (returned, with ``fields`` replaced if given),
            or a dict ``{"name": ..., **fields}`` as in recipes. A ``base`` (in the dict or
            in ``fields``: a name, dict or Method) composes the method on that base
            (:func:`bnnkit.methods.compose.compose`).
        **fields: hyperparameters; an unknown one raises a :class:`ConfigError` listing the
            valid ones.

    Example:
        >>> get_method("irnet", t_min=1e-3)
        >>> get_method({"name": "ovsw", "base": "recu", "delta": 0.04})
    """
    from bnnkit.methods.compose import compose  # compose builds on this module

    if isinstance(spec, dict):
        spec = dict(spec)
        if "name" not in spec:
            raise ConfigError("needs a 'name' key", value=spec, allowed=", ".join(list_methods()))
        name = spec.pop("name")
        return get_method(name, **{**spec, **fields})
    base = fields.pop("base", None)
    if isinstance(spec, Method):
        method = spec.with_fields(**fields) if fields else spec
    else:
        cls = method_class(spec)
        check_fields(cls, fields)
        method = cls(**fields)
    return compose(method, get_method(base)) if base is not None else method


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
    """Raise a :class:`ConfigError` naming ``field`` and its allowed range if the value is
    outside it (or not a number)."""
    value = getattr(method, field)
    lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"must be a number for {method.name}", location=(field,), value=value,
            allowed=f"a number in {lo}, {hi}",
        )  # fmt: skip
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        raise ConfigError(
            f"is out of range for {method.name}", location=(field,), value=value,
            allowed=f"{lo}, {hi}",
        )  # fmt: skip


def check_choice(method: Method, field: str, choices: Iterable[Any]) -> None:
    """Raise a :class:`ConfigError` naming ``field`` and the valid choices if the value is not one."""
    choices = tuple(choices)
    value = getattr(method, field)
    if value not in choices:
        raise ConfigError(
            f"is not valid for {method.name}", location=(field,), value=value,
            allowed=", ".join(map(repr, choices)),
        )  # fmt: skip


def check_ordered(method: Method, low_field: str, high_field: str) -> None:
    """Raise a :class:`ConfigError` unless ``low_field <= high_field``."""
    lo, hi = getattr(method, low_field), getattr(method, high_field)
    if lo > hi:
        raise ConfigError(
            f"must not exceed {high_field} ({hi!r}) for {method.name}",
            location=(low_field,), value=lo, allowed=f"a value <= {high_field}",
        )  # fmt: skip
