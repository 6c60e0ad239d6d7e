"""Recipes: YAML files that become frozen, typed, validated dataclasses.

A recipe may name a ``base:`` recipe (a path relative to it) that it is deep-merged over, so
settings shared by a paper's recipes live in one ``_*.yaml`` file. It has the sections ``data``, ``model``, ``method``, ``optimizer``, ``schedule``,
``training``, ``kd``, ``logging`` and an optional ``stages`` list. Each stage overrides any of
``method``, ``optimizer``, ``schedule``, ``training``, ``kd`` for that stage (a deep merge
over the top level); stage 2 starts from stage 1's final weights. Dotted ``key=value``
overrides (``training.epochs=3``, ``data.root=/data/cifar``, ``stages.1.optimizer.lr=5e-4``)
apply to the raw recipe before validation. Unknown keys, wrong types and out-of-range values
are errors that name the key and list the valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bnnkit.data.config import DataConfig
from bnnkit.methods import Method, get_method
from bnnkit.methods.base import METHODS
from bnnkit.models import model_info, model_options

OPTIMIZERS = ("sgd", "adam", "adamw")
DECAY_RULES = ("all", "no_1d", "conv_fc_names")
SCHEDULES = ("cosine", "linear", "step", "constant")
AMP_MODES = ("none", "bf16", "fp16")


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    """``model:`` section: a registry name plus its options (``num_classes`` comes from data)."""

    name: str = "mlp"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerConfig:
    """``optimizer:`` section.

    Attributes:
        name: ``sgd``, ``adam`` or ``adamw``.
        lr: base learning rate.
        momentum, nesterov: SGD only.
        betas, eps: Adam/AdamW only.
        weight_decay: decay applied to the parameters the rule selects.
        decay_rule: ``all`` (every parameter: ReCU/OvSW CIFAR), ``no_1d`` (1-D parameters
            such as BN, biases and scales get 0: OvSW ImageNet), ``conv_fc_names`` (only names
            containing ``conv`` or ``fc``: ReCU ImageNet). A method's own parameter groups
            (e.g. ReActNet's) that set ``weight_decay`` take precedence.
    """

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_rule: str = "all"

    def __post_init__(self) -> None:
        _choice("optimizer.name", self.name, OPTIMIZERS)
        _choice("optimizer.decay_rule", self.decay_rule, DECAY_RULES)
        _positive("optimizer.lr", self.lr)
        _nonneg("optimizer.weight_decay", self.weight_decay)
        _nonneg("optimizer.momentum", self.momentum)


@dataclass(frozen=True)
class ScheduleConfig:
    """``schedule:`` section: the learning rate of epoch ``e`` of ``E`` (see ``optim.lr_at``).

    Attributes:
        name: ``cosine``, ``linear``, ``step`` or ``constant``.
        warmup_epochs: linear warm-up ``lr * (e + 1) / w`` for ``e < w``.
        min_lr: cosine floor added to the curve (OvSW: 1e-5).
        cosine_offset: ReCU's CosineAnnealingLR starts one epoch before warm-up ends
            (T_max = E - w + 1): set 1 for ReCU, 0 for OvSW.
        step_at: linear decay stepped at the ``start`` of each epoch (ReActNet: epoch e runs
            at ``lr (1 - (e + 1) / E)``, the last at 0) or at the ``end`` (ReBNN: ``lr (1 - e / E)``).
        milestones, gamma: step decay, ``lr * gamma ** (number of milestones <= e)``.
        per_step: interpolate within epochs (per optimizer step) instead of per epoch.
    """

    name: str = "cosine"
    warmup_epochs: int = 0
    min_lr: float = 0.0
    cosine_offset: int = 0
    step_at: str = "end"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    per_step: bool = False

    def __post_init__(self) -> None:
        _choice("schedule.name", self.name, SCHEDULES)
        _choice("schedule.step_at", self.step_at, ("start", "end"))
        _nonneg("schedule.warmup_epochs", self.warmup_epochs)
        _nonneg("schedule.min_lr", self.min_lr)
        _choice("schedule.cosine_offset", self.cosine_offset, (0, 1))


@dataclass(frozen=True)
class TrainingConfig:
    """``training:`` section.

    Attributes:
        epochs: epochs of the stage.
        label_smoothing: cross-entropy label smoothing (Bi-Real's PyTorch recipe: 0.1).
        grad_clip: max gradient norm (clipping after the method's gradient rules), or null.
        amp: ``none``, ``bf16`` or ``fp16`` autocast; CUDA only (ignored on CPU, with a note);
            fp16 uses a GradScaler, and the method's gradient rules see unscaled gradients.
        compile: wrap the model with ``torch.compile``.
        channels_last: NHWC memory format (CUDA only).
        seed: seeds torch, numpy and random, and the data order.
        deterministic: ``torch.use_deterministic_algorithms(True)`` and cudnn deterministic.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:N``.
        sync_bn: convert BatchNorm to SyncBatchNorm under DDP (CUDA only; PyTorch's
            SyncBatchNorm has no CPU kernel, so CPU runs keep per-process statistics).
        eval_every: evaluate every N epochs (the last epoch is always evaluated).
    """

    epochs: int = 10
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: str = "none"
    compile: bool = False
    channels_last: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    sync_bn: bool = False
    eval_every: int = 1

    def __post_init__(self) -> None:
        _positive("training.epochs", self.epochs)
        _choice("training.amp", self.amp, AMP_MODES)
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                f"training.label_smoothing = {self.label_smoothing} must be in [0, 1)"
            )
        if self.grad_clip is not None:
            _positive("training.grad_clip", self.grad_clip)
        _positive("training.eval_every", self.eval_every)


@dataclass(frozen=True)
class KDConfig:
    """``kd:`` section: knowledge distillation (ReActNet's distribution loss).

    Attributes:
        teacher: path of a bnnkit checkpoint (``.pt``) or run directory whose model is the
            frozen teacher; null = no distillation. (From Python, ``bnnkit.train(...,
            teacher=module)`` takes any ``nn.Module``.)
        temperature: softmax temperature (1 in ReActNet).
        alpha: weight of the distillation loss; the hard-label CE gets ``1 - alpha``
            (ReActNet: 1, KD only).
    """

    teacher: str | None = None
    temperature: float = 1.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        _positive("kd.temperature", self.temperature)
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"kd.alpha = {self.alpha} must be in [0, 1]")


@dataclass(frozen=True)
class LoggingConfig:
    """``logging:`` section.

    Attributes:
        log_every: steps between log events (the only host syncs of the loop).
        tensorboard: write TensorBoard event files when ``tensorboard`` is installed.
        progress: tqdm progress bar: ``auto`` (only on a terminal), ``on``, ``off``.
    """

    log_every: int = 50
    tensorboard: bool = True
    progress: str = "auto"

    def __post_init__(self) -> None:
        _positive("logging.log_every", self.log_every)
        _choice("logging.progress", self.progress, ("auto", "on", "off"))


@dataclass(frozen=True)
class DiagnosticsConfig:
    """``diagnostics:`` section: the training-dynamics trackers (:mod:`bnnkit.diagnostics`).

    Attributes:
        enabled: track flips, oscillation, back-and-forth, silent and dead weights of every
            binary-weight layer (4 bytes of state per weight; a few % of step time).
        every: update the trackers every this many optimizer steps (1: every step; with
            more, a flip undone between two updates is not seen).
        hist_every: latent-weight histograms every this many epochs (0: only at the start
            and the end of each stage).
        hist_bins: bins per histogram.
        keep_dumps: keep the per-weight flip counts of every epoch
            (``dynamics/<stage>-epochNNN-flips.safetensors``) instead of only the latest.
    """

    enabled: bool = True
    every: int = 1
    hist_every: int = 1
    hist_bins: int = 64
    keep_dumps: bool = False

    def __post_init__(self) -> None:
        _positive("diagnostics.every", self.every)
        _nonneg("diagnostics.hist_every", self.hist_every)
        _positive("diagnostics.hist_bins", self.hist_bins)


@dataclass(frozen=True)
class StageConfig:
    """One training stage, fully resolved."""

    name: str
    method: Method
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    training: TrainingConfig
    kd: KDConfig


@dataclass(frozen=True)
class RunConfig:
    """A whole recipe, resolved: shared data/model/logging plus one or more stages."""

    name: str
    data: DataConfig
    model: ModelConfig
    logging: LoggingConfig
    stages: tuple[StageConfig, ...]
    raw: dict[str, Any] = field(compare=False, repr=False)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what ``config.yaml`` and checkpoints hold)."""
        return {
            "name": self.name,
            "data": _plain(self.data),
            "model": {"name": self.model.name, **self.model.options},
            "logging": _plain(self.logging),
            "diagnostics": _plain(self.diagnostics),
            "stages": [
                {
                    "name": s.name,
                    "method": s.method.to_config(),
                    "optimizer": _plain(s.optimizer),
                    "schedule": _plain(s.schedule),
                    "training": _plain(s.training),
                    "kd": _plain(s.kd),
                }
                for s in self.stages
            ],
        }


STAGE_KEYS = ("method", "optimizer", "schedule", "training", "kd")
TOP_KEYS = ("name", "base", "data", "model", "logging", "diagnostics", "stages", *STAGE_KEYS)
SECTION_TYPES = {
    "data": DataConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "training": TrainingConfig,
    "kd": KDConfig,
    "logging": LoggingConfig,
    "diagnostics": DiagnosticsConfig,
}


# -- helpers ----------------------------------------------------------------------------------------


def _choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key} = {value!r} is not valid; choose one of {list(choices)}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} = {value!r} must be > 0")


def _nonneg(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key} = {value!r} must be >= 0")


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_plain(v) for v in obj]
    return obj


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML value to the field's type, or raise a ConfigError naming ``key``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(
            _coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)  # YAML reads 1e-3 (no dot) as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            return "on" if value else "off"
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def build_section(cls: type, raw: Any, key: str) -> Any:
    """Build the dataclass ``cls`` from the mapping ``raw`` (``key`` names it in errors)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {[f'{key}.{u}' for u in unknown]}; valid keys: {valid}")
    values = {k: _coerce(v, hints[k], f"{key}.{k}") for k, v in raw.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "method":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _build_method(raw: Any, key: str) -> Method:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(f"{key} must be a mapping with a 'name' (e.g. {{name: reactnet}})")
    try:
        hints = typing.get_type_hints(METHODS.get(raw["name"]))
        raw = {k: _coerce(v, hints[k], f"{key}.{k}") if k in hints and k != "name" else v
               for k, v in raw.items()}  # fmt: skip
        return get_method(raw)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{key}: {err}") from None


def _build_model(raw: Any) -> ModelConfig:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError("model must be a mapping with a 'name' (see `bnnkit list models`)")
    raw = dict(raw)
    name = raw.pop("name")
    try:
        info = model_info(name)
    except ValueError as err:
        raise ConfigError(f"model.name: {err}") from None
    valid = model_options(info.name)
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {[f'model.{u}' for u in unknown]} for model {name!r}; valid: {valid}"
        )
    return ModelConfig(name, raw)


def _build_stage(raw: dict, index: int, defaults: dict) -> StageConfig:
    merged = _deep_merge({k: defaults.get(k) or {} for k in STAGE_KEYS}, raw)
    prefix = f"stages.{index}." if "name" in raw else ""
    unknown = sorted(set(raw) - {"name", *STAGE_KEYS})
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in stages.{index}; valid: {['name', *STAGE_KEYS]}"
        )
    if not merged.get("method"):
        raise ConfigError(f"{prefix}method is missing; valid methods: see `bnnkit list methods`")
    return StageConfig(
        name=str(raw.get("name", f"stage{index + 1}")),
        method=_build_method(merged["method"], f"{prefix}method"),
        optimizer=build_section(OptimizerConfig, merged["optimizer"], f"{prefix}optimizer"),
        schedule=build_section(ScheduleConfig, merged["schedule"], f"{prefix}schedule"),
        training=build_section(TrainingConfig, merged["training"], f"{prefix}training"),
        kd=build_section(KDConfig, merged["kd"], f"{prefix}kd"),
    )


# -- public ---------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (``["a", "b", "c"]``, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. training.epochs=3)")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override key {key!r} is empty or has an empty part")
    return parts, yaml.safe_load(value) if value.strip() else None


def _has_path(node: Any, parts: list[str]) -> bool:
    for part in parts:
        if isinstance(node, str) and part != parts[-1]:
            node = {"name": node}
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _is_method_name(parts: list[str]) -> bool:
    return parts[-1] == "method" or parts[-2:] == ["method", "name"]


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any]) -> dict:
    """Apply dotted overrides to a raw recipe dict (returns a new dict).

    Setting ``method.name`` (or ``method``) replaces that method section: the recipe's
    hyperparameters belong to the old method. Other ``method.*`` overrides apply after it.
    A top-level override of a stage key (``training.epochs=1``) also overrides every stage
    that sets the same key; ``stages.N.training.epochs=1`` targets one stage.
    """
    raw = copy.deepcopy(raw)
    if isinstance(overrides, dict):
        items = [(k.split("."), v) for k, v in overrides.items()]
    else:
        items = [parse_override(o) for o in overrides]
    items.sort(key=lambda item: not _is_method_name(item[0]))  # method switches first
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
            raise ConfigError(
                f"unknown top-level key {parts[0]!r} in override; valid: {list(TOP_KEYS)}"
            )
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {'.'.join(parts)}: no list item {part!r}")
                node = node[int(part)]
                continue
            if part in ("method", "model") and isinstance(node.get(part), str):
                node[part] = {"name": node[part]}
            if _is_method_name(parts) and i == len(parts) - 2 and part == "method":
                node[part] = {}
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(
                    f"override {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a section"
                )
        if isinstance(node, list):
            raise ConfigError(f"override {'.'.join(parts)} cannot replace a whole list item")
        node[parts[-1]] = value
    return raw


def load_recipe(
    recipe: str | Path | dict[str, Any], overrides: list[str] | dict[str, Any] | None = None
) -> RunConfig:
    """Load and validate a recipe (a path, a name under ``recipes/`` or a dict) with overrides."""
    if isinstance(recipe, dict):
        raw, default_name = _resolve_base(copy.deepcopy(recipe), recipes_dir(), ()), "recipe"
    else:
        path = find_recipe(recipe)
        raw = _read_recipe(path, ())
        root = recipes_dir().resolve()
        rel = path.resolve().relative_to(root) if path.resolve().is_relative_to(root) else None
        default_name = str(rel.with_suffix("")) if rel else path.stem
    raw = apply_overrides(raw, overrides or [])
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; valid keys: {list(TOP_KEYS)}")
    stages_raw = raw.get("stages") or [{}]
    if not isinstance(stages_raw, list) or not all(isinstance(s, dict) for s in stages_raw):
        raise ConfigError("stages must be a list of mappings")
    stages = tuple(_build_stage(s, i, raw) for i, s in enumerate(stages_raw))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stage names must be unique, got {names}")
    return RunConfig(
        name=str(raw.get("name") or default_name),
        data=build_section(DataConfig, raw.get("data"), "data"),
        model=_build_model(raw.get("model") or {"name": "mlp"}),
        logging=build_section(LoggingConfig, raw.get("logging"), "logging"),
        diagnostics=build_section(DiagnosticsConfig, raw.get("diagnostics"), "diagnostics"),
        stages=stages,
        raw=raw,
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
        raise ConfigError(f"recipe base {base!r} not found (looked for {path})")
    return _deep_merge(_read_recipe(path, chain), raw)


def recipes_dir() -> Path:
    """The shipped ``recipes/`` folder (env ``BNNKIT_RECIPES`` overrides)."""
    env = os.environ.get("BNNKIT_RECIPES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "recipes"


def list_recipes() -> list[str]:
    """Shipped recipe names, e.g. ``cifar10/resnet20_reactnet`` (relative, without ``.yaml``)."""
    root = recipes_dir()
    return sorted(
        str(p.relative_to(root).with_suffix(""))
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
    raise ConfigError(
        f"recipe {str(recipe)!r} is neither a file nor a shipped recipe; "
        f"shipped: {', '.join(list_recipes()) or '(none found in ' + str(recipes_dir()) + ')'}"
    )
