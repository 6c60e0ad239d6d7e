"""Recipes: YAML files that become a validated :class:`~bnnkit.config.RunConfig`.

A recipe may name a ``base:`` recipe (a path relative to it) that it is deep-merged over, so
settings shared by a paper's recipes live in one ``_*.yaml`` file. It has the sections
``data``, ``model``, ``method``, ``optimizer``, ``schedule``, ``training``, ``kd``,
``logging``, ``diagnostics`` and an optional ``stages`` list. Each stage overrides any of
``method``, ``optimizer``, ``schedule``, ``training``, ``kd`` for that stage (a deep merge over
the top level); stage 2 starts from stage 1's final weights. Dotted ``key=value`` overrides
(``training.epochs=3``, ``data.root=/data/cifar``, ``stages.1.optimizer.lr=5e-4``) apply to the
raw recipe before validation (:mod:`bnnkit.config.validate`).

Recipes ship inside the package (``bnnkit/recipes/``, package data), so a wheel install finds
them; ``BNNKIT_RECIPES`` points discovery at another folder.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from bnnkit.config.schema import (
    STAGE_KEYS,
    TOP_KEYS,
    BinaryOptimizerConfig,
    DiagnosticsConfig,
    GammaScheduleConfig,
    KDConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
    StageConfig,
    TrainingConfig,
)
from bnnkit.config.validate import build_method, build_section
from bnnkit.data.config import DataConfig
from bnnkit.errors import ConfigError
from bnnkit.models import model_info, model_options

# -- raw recipe mechanics ---------------------------------------------------------------------


def deep_merge(base: dict, update: dict) -> dict:
    """``update`` over ``base`` (nested mappings merged; a ``method`` section is replaced)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "method":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (``["a", "b", "c"]``, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError("must look like key=value (e.g. training.epochs=3)", value=text)
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError("is an override key with an empty part", value=key)
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise ConfigError(f"is not a YAML value ({problem}); quote a string, e.g. "
                          f"'{key.strip()}=\"...\"'", location=parts, value=value) from None  # fmt: skip
    return parts, parsed


def _has_path(node: Any, parts: list[str]) -> bool:
    for part in parts:
        if isinstance(node, str) and part != parts[-1]:
            node = {"name": node}
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


_SWITCHED = ("method", "model")  # sections whose name picks the meaning of their other keys


def _is_switch(parts: list[str]) -> bool:
    """``method.name`` / ``model.name`` (or the whole section set to a name)."""
    return parts[-1] in _SWITCHED or (len(parts) >= 2 and parts[-1] == "name"
                                      and parts[-2] in _SWITCHED)  # fmt: skip


def _items(overrides: list[str] | dict[str, Any]) -> list[tuple[list[str], Any]]:
    if isinstance(overrides, dict):
        return [(k.split("."), v) for k, v in overrides.items()]
    return [parse_override(o) for o in overrides]


def _set(raw: dict, parts: list[str], value: Any) -> None:
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"no list item {part!r}", location=parts)
            node = node[int(part)]
            continue
        if part in _SWITCHED and isinstance(node.get(part), str):
            node[part] = {"name": node[part]}
        if _is_switch(parts) and i == len(parts) - 2 and part in _SWITCHED:
            section = node.get(part)
            if not (isinstance(section, dict) and section.get("name") == value):
                node[part] = {}  # another method / model: the old one's options do not apply
        node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is not a section", location=parts)
    if isinstance(node, list):
        raise ConfigError("cannot replace a whole list item", location=parts)
    node[parts[-1]] = value


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any]) -> dict:
    """Apply dotted overrides to a raw recipe dict (returns a new dict).

    Setting ``method.name`` or ``model.name`` to another name replaces that section: the
    recipe's hyperparameters and model options belong to the old one. Other ``method.*`` /
    ``model.*`` overrides apply after it.
    A top-level override of a stage key (``training.epochs=1``) also overrides every stage
    that sets the same key; ``stages.N.training.epochs=1`` targets one stage.
    """
    raw = copy.deepcopy(raw)
    items = _items(overrides)
    items.sort(key=lambda item: not _is_switch(item[0]))  # method / model switches first
    stages = raw.get("stages")
    if isinstance(stages, list):  # a top-level stage key also overrides the stages that set it
        items += [
            (["stages", str(i), *parts], value)
            for parts, value in list(items)
            if parts[0] in STAGE_KEYS
            for i, stage in enumerate(stages)
            if isinstance(stage, dict) and _has_path(stage, parts)
        ]
    for parts, value in items:
        if parts[0] not in TOP_KEYS:
            raise ConfigError("not a top-level key of a recipe", location=parts[:1],
                              allowed=", ".join(TOP_KEYS))  # fmt: skip
        _set(raw, parts, value)
    return raw


# -- discovery --------------------------------------------------------------------------------


def recipes_dir() -> Path:
    """The shipped recipes (``bnnkit/recipes/``, package data; env ``BNNKIT_RECIPES`` overrides)."""
    env = os.environ.get("BNNKIT_RECIPES")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "recipes"


def list_recipes() -> list[str]:
    """Shipped recipe names, e.g. ``cifar10/resnet20_reactnet`` (relative, without ``.yaml``)."""
    root = recipes_dir()
    return sorted(
        str(p.relative_to(root).with_suffix("")).replace(os.sep, "/")
        for p in root.rglob("*.yaml")
        if not p.name.startswith("_")  # _*.yaml are shared bases, not runnable recipes
    )


def find_recipe(recipe: str | Path) -> Path:
    """A recipe path, or a shipped recipe name (``quickstart``, ``cifar10/resnet20_ste``)."""
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = recipes_dir() / (str(recipe) if str(recipe).endswith(".yaml") else f"{recipe}.yaml")
    if shipped.is_file():
        return shipped
    names = list_recipes()
    raise ConfigError(
        "is neither a file nor a shipped recipe",
        value=str(recipe),
        allowed=", ".join(names) if names else f"(no recipes found in {recipes_dir()})",
    )


def _read_recipe(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping of sections")
    return _resolve_base(raw, path.parent, (*chain, path.resolve()))


def _resolve_base(raw: dict[str, Any], folder: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """Merge ``raw`` over the recipe its ``base:`` key names (relative to ``folder``)."""
    base = raw.pop("base", None)
    if base is None:
        return raw
    path = (folder / str(base)).resolve()
    if path in chain:
        raise ConfigError(f"recipe base cycle: {' -> '.join(map(str, (*chain, path)))}")
    if not path.is_file():
        raise ConfigError(f"names a recipe that does not exist ({path})", location=("base",),
                          value=base)  # fmt: skip
    return deep_merge(_read_recipe(path, chain), raw)


# -- validation -------------------------------------------------------------------------------


def _build_model(raw: Any) -> ModelConfig:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError("must be a mapping with a 'name' (see `bnnkit list models`)",
                          location=("model",), value=raw)  # fmt: skip
    options = dict(raw)
    name, pad_value = options.pop("name"), options.pop("pad_value", 0.0)
    try:
        info = model_info(name)
    except ConfigError as err:
        raise err.at("model", "name") from None
    valid = model_options(info.name)
    for key in options:
        if key not in valid:
            raise ConfigError(f"not an option of model {info.name}", location=("model", key),
                              allowed=", ".join([*valid, "pad_value"]))  # fmt: skip
    if isinstance(pad_value, (int, float)) and not isinstance(pad_value, bool):
        pad_value = float(pad_value)
    try:
        return ModelConfig(name, options, pad_value)
    except ConfigError as err:
        raise err.at("model") from None


def _build_optimizer(raw: Any, where: tuple[str | int, ...]) -> OptimizerConfig:
    """The optimizer section, with its nested ``binary`` (and its ``gamma_schedule``)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("binary"), dict):
        return build_section(OptimizerConfig, raw, where)
    binary = dict(raw["binary"])
    binary["gamma_schedule"] = build_section(GammaScheduleConfig, binary.get("gamma_schedule"),
                                             (*where, "binary", "gamma_schedule"))  # fmt: skip
    built = build_section(BinaryOptimizerConfig, binary, (*where, "binary"))
    return build_section(OptimizerConfig, {**raw, "binary": built}, where)


def _build_stage(raw: dict, index: int, defaults: dict, staged: bool) -> StageConfig:
    where: tuple[str | int, ...] = ("stages", index) if staged else ()
    for key in raw:
        if key not in ("name", *STAGE_KEYS):
            raise ConfigError("not a key of a stage", location=(*where, key),
                              allowed=", ".join(("name", *STAGE_KEYS)))  # fmt: skip
    merged = deep_merge({k: defaults.get(k) or {} for k in STAGE_KEYS}, raw)
    if not merged.get("method"):
        raise ConfigError("missing (see `bnnkit list methods`)", location=(*where, "method"))
    return StageConfig(
        name=str(raw.get("name", f"stage{index + 1}")),
        method=build_method(merged["method"], (*where, "method")),
        optimizer=_build_optimizer(merged["optimizer"], (*where, "optimizer")),
        schedule=build_section(ScheduleConfig, merged["schedule"], (*where, "schedule")),
        training=build_section(TrainingConfig, merged["training"], (*where, "training")),
        kd=build_section(KDConfig, merged["kd"], (*where, "kd")),
    )


def validate(raw: dict[str, Any], name: str) -> RunConfig:
    """A merged raw recipe (bases resolved, overrides applied) -> :class:`RunConfig`."""
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError("not a top-level key of a recipe", location=(key,),
                              allowed=", ".join(TOP_KEYS))  # fmt: skip
    stages_raw = raw.get("stages") or [{}]
    if not isinstance(stages_raw, list) or not all(isinstance(s, dict) for s in stages_raw):
        raise ConfigError("must be a list of mappings", location=("stages",), value=stages_raw)
    staged = "stages" in raw and bool(raw["stages"])
    stages = tuple(_build_stage(s, i, raw, staged) for i, s in enumerate(stages_raw))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError("must be unique", location=("stages", "name"), value=names)
    for i in range(1, len(stages)):
        why = stages[i].method.refuses_previous(stages[i - 1].method)
        if why:
            raise ConfigError(why, location=("stages", i, "method"))
    return RunConfig(
        name=str(raw.get("name") or name),
        data=build_section(DataConfig, raw.get("data"), ("data",)),
        model=_build_model(raw.get("model") or {"name": "mlp"}),
        logging=build_section(LoggingConfig, raw.get("logging"), ("logging",)),
        diagnostics=build_section(DiagnosticsConfig, raw.get("diagnostics"), ("diagnostics",)),
        stages=stages,
        raw=raw,
    )


def load_recipe(
    recipe: str | Path | dict[str, Any],
    overrides: list[str] | dict[str, Any] | None = None,
    name: str | None = None,
) -> RunConfig:
    """Load and validate a recipe (a path, a shipped name or a dict) with overrides. ``name``
    names a dict recipe (a resumed run's own name; default ``recipe``)."""
    if isinstance(recipe, dict):
        raw = _resolve_base(copy.deepcopy(recipe), recipes_dir(), ())
        name = name or "recipe"
    else:
        path = find_recipe(recipe)
        raw = _read_recipe(path, ())
        root = recipes_dir().resolve()
        rel = path.resolve().relative_to(root) if path.resolve().is_relative_to(root) else None
        name = rel.with_suffix("").as_posix() if rel else path.stem
    return validate(apply_overrides(raw, overrides or []), name)
