"""``binarize_`` (attach a method to a model, in place) and ``binary_layers``.

Modelled on torchao's ``quantize_(model, config, filter_fn)``: the model is changed in
place and returned. On a model with no bnnkit binary layer, ``nn.Conv2d`` / ``nn.Linear``
modules are first swapped for ``BinaryConv2d`` / ``BinaryLinear`` sharing the same
Parameters (so an optimizer built before still holds them).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import nn

from bnnkit.errors import ConfigError
from bnnkit.methods.base import Method, get_method
from bnnkit.nn import BinaryConv2d, BinaryLayer, BinaryLinear, SignHistory, binary_layers

logger = logging.getLogger("bnnkit")

FilterFn = Callable[[nn.Module, str], bool]


@dataclass
class BinarizeReport:
    """What :func:`binarize_` did; logged on the ``bnnkit`` logger and printed when verbose."""

    method: str
    swapped: list[str] = field(default_factory=list)
    kept_float: dict[str, str] = field(default_factory=dict)
    attached: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"binarize_: method {self.method!r} attached to {len(self.attached)} layer(s)"]
        if self.swapped:
            lines.append(f"  swapped to binary: {len(self.swapped)} ({', '.join(self.swapped)})")
        for name, why in self.kept_float.items():
            lines.append(f"  kept float: {name} ({why})")
        return "\n".join(lines)


def _swappable(module: nn.Module) -> bool:
    # Exact types only: subclasses (e.g. MultiheadAttention's out_proj, custom convs) may not
    # route through forward() and would be silently left unbinarized.
    return type(module) in (nn.Conv2d, nn.Linear)


def _default_keep(model: nn.Module) -> dict[str, str]:
    """First ``nn.Conv2d`` and last ``nn.Linear`` in registration order stay float."""
    convs = [n for n, m in model.named_modules() if type(m) is nn.Conv2d]
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    keep = {}
    if convs:
        keep[convs[0]] = "first conv"
    if linears:
        keep[linears[-1]] = "last linear"
    return keep


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _replace_modules(model: nn.Module, mapping: dict[int, nn.Module]) -> None:
    """Replace every reference to a module whose id is in ``mapping`` (shared modules too)."""
    for parent in model.modules():
        for child_name, child in list(parent.named_children()):
            if id(child) in mapping:
                setattr(parent, child_name, mapping[id(child)])


def _select(
    model: nn.Module,
    candidates: list[tuple[str, nn.Module]],
    filter_fn: FilterFn | None,
    keep_float: Iterable[str] | None,
    use_default_keep: bool,
) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    keep = _default_keep(model) if use_default_keep else {}
    patterns = [keep_float] if isinstance(keep_float, str) else list(keep_float or [])
    chosen, kept = [], {}
    for name, module in candidates:
        if name in keep:
            kept[name] = keep[name]
        elif patterns and _matches(name, patterns):
            kept[name] = "keep_float"
        elif filter_fn is not None and not filter_fn(module, name):
            kept[name] = "filter_fn"
        else:
            chosen.append((name, module))
    return chosen, kept


def binarize_(
    model: nn.Module,
    method: Method | str | dict,
    filter_fn: FilterFn | None = None,
    *,
    keep_float: Iterable[str] | str | None = None,
    pad_value: float | None = None,
    verbose: bool = False,
) -> nn.Module:
    """Attach ``method`` to the model's binary layers, in place; returns ``model``.

    * If the model has ``BinaryConv2d`` / ``BinaryLinear`` layers (every bnnkit model), the
      method is attached to them. Layers excluded by ``filter_fn`` / ``keep_float`` are turned
      back into plain ``nn.Conv2d`` / ``nn.Linear`` (same Parameters), so
      :func:`binary_layers` lists exactly the layers the method acts on.
    * Otherwise every ``nn.Conv2d`` / ``nn.Linear`` (exact types) is swapped for a binary one,
      except, by default, the first conv and the last linear (registration order), which the
      papers keep in full precision.

    Args:
        model: any ``nn.Module``.
        method: a :class:`Method`, a registered name, or a dict ``{"name": ..., **fields}``.
        filter_fn: ``filter_fn(module, qualified_name) -> bool``; ``False`` keeps the layer
            float. Given, it replaces the default first-conv / last-linear rule.
        keep_float: glob patterns of qualified names to keep float (e.g. ``["conv1", "fc",
            "*.downsample.*"]``). Given, it replaces the default rule too.
        pad_value: what every attached ``BinaryConv2d`` pads its binarized input with: 0 (the
            papers' zero padding) or ±1 (a true ±1 convolution, what Larq Compute Engine's and
            OpenVINO's binary kernels run); ``None`` keeps each layer's own (0 by default).
        verbose: print the report (it is always logged at INFO on the ``bnnkit`` logger).

    Each attached layer gets the method's per-layer state (``layer.method_state``, one
    entry per part of a composed method) and, when its weight is binarized, a
    :class:`~bnnkit.nn.SignHistory` of that weight's sign.

    Raises:
        ConfigError: no layer is left to binarize.
    """
    method = get_method(method)
    report = BinarizeReport(method=method.name)
    existing = binary_layers(model)
    use_default = filter_fn is None and keep_float is None
    if existing:
        chosen, report.kept_float = _select(model, existing, filter_fn, keep_float, False)
        excluded = {id(m): m.to_float() for n, m in existing if n in report.kept_float}
        _replace_modules(model, excluded)
    else:
        candidates = [(n, m) for n, m in model.named_modules() if _swappable(m)]
        chosen, report.kept_float = _select(model, candidates, filter_fn, keep_float, use_default)
        swaps: dict[int, nn.Module] = {}
        for name, module in chosen:
            cls = BinaryConv2d if isinstance(module, nn.Conv2d) else BinaryLinear
            swaps[id(module)] = cls.from_float(module)
            report.swapped.append(name)
        _replace_modules(model, swaps)
        chosen = [(n, swaps[id(m)]) for n, m in chosen]
    if not chosen:
        raise ConfigError(
            "binarize_: no layer to binarize (the model has no nn.Conv2d/nn.Linear left after "
            f"the filter; kept float: {report.kept_float}). Pass filter_fn or keep_float to choose."
        )
    for name, layer in chosen:
        if pad_value is not None and isinstance(layer, BinaryConv2d):
            layer.pad_value = pad_value  # first, so that the method's builders see it
        _attach(layer, method)
        report.attached.append(name)
    logger.info("%s", report)
    if verbose:
        print(report)
    return model


def _placed(module: nn.Module | None, ref: nn.Parameter) -> nn.Module | None:
    return None if module is None else module.to(device=ref.device, dtype=ref.dtype)


def _attach(layer: BinaryLayer, method: Method) -> None:
    ref = layer.weight
    # The states are built (and attached) first, so the other builders may refer to them.
    layer.method_state = nn.ModuleDict()
    for part in method.parts():
        state = _placed(part.build_layer_state(layer), ref)
        if state is not None:
            layer.method_state[part.name] = state
    layer.weight_binarizer = _placed(method.build_weight_binarizer(layer), ref)
    layer.input_binarizer = _placed(method.build_input_binarizer(layer), ref)
    layer.scale = _placed(method.build_scale(layer), ref)
    has_sign = layer.binary_weight
    layer.sign_history = SignHistory(layer.sign_input()).to(ref.device) if has_sign else None
    layer.method_name = method.name
