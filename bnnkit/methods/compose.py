"""Composition: one method's training rules on another method's binarizers.

``{name: ovsw, base: recu}`` (or ``get_method("ovsw", base="recu")``) is ReCU's layers (its
standardise-and-clamp weight binarizer, its τ schedule, its scale) trained with OvSW's gradient
rules (AGS, SAD) on top. Every hook of every part runs; nothing of either part is dropped.

The parts of a composed method, base first, are ``method.parts()``; what runs, in order:

==========================  ==========================================================
builders (``binarize_``)    every part's ``build_layer_state`` (base first; kept as
                            ``layer.method_state[<part name>]``, so parts never collide);
                            the base's weight binarizer, input binarizer and scale; then
                            each part above the base may wrap that scale (``wrap_scale``)
``param_groups``            the base's (the base builds the layers' parameters)
``on_step_start``           every part, base first
``extra_losses``            every part, base first; the names must differ
``before_optimizer_step``   every part, base first: each part's gradient rule sees the
                            gradient as the rules of the parts below left it
``after_optimizer_step``    every part, base first (after the one shared sign-history
                            update); the metric names must differ
==========================  ==========================================================

Refused at construction, with a :class:`~bnnkit.errors.ConfigError` naming both parts and why:

* a part above the base that only says how layers binarize (``adds_rules = False``: ste,
  xnor, bireal, irnet, reactnet, recu, float): its binarizers would be ignored and the hooks
  that drive them (ReCU's τ schedule, IR-Net's EDE schedule) would find nothing to drive;
* a base whose weights stay float (``float``, ``reactnet`` with ``weights: float``): the rules
  act on binary weights;
* a part that appears twice; any part-specific refusal (:meth:`Method.refuses_base`, e.g.
  ReBNN's ``official_code`` variant, which has its own scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from bnnkit.binarize import Scale
from bnnkit.errors import ConfigError
from bnnkit.methods.base import Method, TrainState
from bnnkit.nn import BinaryLayer, LayerList


def _merge(
    parts: tuple[Method, ...], results: list[dict[str, Tensor]], what: str
) -> dict[str, Tensor]:
    merged: dict[str, Tensor] = {}
    owner: dict[str, str] = {}
    for part, values in zip(parts, results, strict=True):
        for key, value in (values or {}).items():
            if key in merged:
                raise RuntimeError(
                    f"{part.name} and {owner[key]} both return the {what} {key!r}; name a "
                    f"method's {what}s '<method>/<name>'"
                )
            merged[key], owner[key] = value, part.name
    return merged


@dataclass(frozen=True)
class Composed(Method):
    """A method made of parts (base first): the base's binarizers and scale, every part's
    state, schedules, gradient rules and metrics (see the module docstring for the order).

    Build it with :func:`compose` or ``get_method(..., base=...)``, which check the parts.
    """

    members: tuple[Method, ...]

    @property
    def name(self) -> str:  # type: ignore[override]
        """The parts' names, top first, joined by ``+`` (``ovsw+recu``)."""
        return "+".join(p.name for p in reversed(self.members))

    @property
    def base(self) -> Method:
        """The part that builds the layers' binarizers and scale."""
        return self.members[0]

    def parts(self) -> tuple[Method, ...]:
        return self.members

    # -- builders --------------------------------------------------------------------------------
    def build_weight_binarizer(self, layer: BinaryLayer) -> nn.Module | None:
        return self.base.build_weight_binarizer(layer)

    def build_input_binarizer(self, layer: BinaryLayer) -> nn.Module | None:
        return self.base.build_input_binarizer(layer)

    def build_scale(self, layer: BinaryLayer) -> Scale | None:
        scale = self.base.build_scale(layer)
        for part in self.members[1:]:
            scale = part.wrap_scale(layer, scale)
        return scale

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return self.base.param_groups(model)

    # -- every step ------------------------------------------------------------------------------
    def on_step_start(self, layers: LayerList, state: TrainState) -> None:
        for part in self.members:
            part.on_step_start(layers, state)

    def extra_losses(
        self, layers: LayerList, outputs: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        results = [p.extra_losses(layers, outputs, targets) for p in self.members]
        return _merge(self.members, results, "extra loss")

    def before_optimizer_step(self, layers: LayerList, state: TrainState) -> None:
        for part in self.members:
            part.before_optimizer_step(layers, state)

    def after_optimizer_step(self, layers: LayerList, state: TrainState) -> dict[str, Tensor]:
        results = [p.after_optimizer_step(layers, state) for p in self.members]
        return _merge(self.members, results, "metric")

    # -- configuration ---------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """The recipe form: the top part's config with ``base:`` the rest's."""
        *rest, top = self.members
        base = rest[0] if len(rest) == 1 else Composed(tuple(rest))
        return {**top.to_config(), "base": base.to_config()}

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_config().items() if k != "name"}

    def with_fields(self, **fields: Any) -> Method:
        """A copy with hyperparameters of the top part replaced."""
        return Composed((*self.members[:-1], self.members[-1].with_fields(**fields)))

    @property
    def binarizes_weights(self) -> bool:
        return self.base.binarizes_weights

    @property
    def monotone_weight_sign(self) -> bool:
        return self.base.monotone_weight_sign

    @property
    def latent_free(self) -> bool:
        return self.base.latent_free

    @property
    def symmetric_weight_set(self) -> bool:
        return self.base.symmetric_weight_set

    @property
    def weight_sign_kind(self) -> str:
        return self.base.weight_sign_kind


def compose(top: Method, base: Method) -> Composed:
    """``top``'s parts on ``base``'s parts, or a :class:`ConfigError` naming both and why."""
    members = (*base.parts(), *top.parts())
    names = [m.name for m in members]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(
            f"cannot compose {top.name} on {base.name}: {', '.join(twice)} would appear twice "
            "(each part keeps its per-layer state under its own name)"
        )
    bottom = members[0]
    for upper in members[1:]:
        why = upper.refuses_base(bottom)
        if why is not None:
            raise ConfigError(f"cannot compose {upper.name} on {bottom.name}: {why}")
    return Composed(members)
