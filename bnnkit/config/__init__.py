"""Recipes -> validated frozen sections: the schema, validation in one dialect, and the recipe
mechanics (``base:`` inheritance, merging, dotted overrides, stages, discovery)."""

from bnnkit.config.recipes import (
    apply_overrides,
    deep_merge,
    find_recipe,
    list_recipes,
    load_recipe,
    parse_override,
    recipes_dir,
    validate,
)
from bnnkit.config.schema import (
    AMP_MODES,
    DECAY_RULES,
    OPTIMIZERS,
    SCHEDULES,
    STAGE_KEYS,
    TOP_KEYS,
    DiagnosticsConfig,
    KDConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
    StageConfig,
    TrainingConfig,
    plain,
)
from bnnkit.config.validate import build_method, build_section
from bnnkit.data.config import DataConfig
from bnnkit.errors import ConfigError

__all__ = [
    "AMP_MODES",
    "DECAY_RULES",
    "OPTIMIZERS",
    "SCHEDULES",
    "STAGE_KEYS",
    "TOP_KEYS",
    "ConfigError",
    "DataConfig",
    "DiagnosticsConfig",
    "KDConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "RunConfig",
    "ScheduleConfig",
    "StageConfig",
    "TrainingConfig",
    "apply_overrides",
    "build_method",
    "build_section",
    "deep_merge",
    "find_recipe",
    "list_recipes",
    "load_recipe",
    "parse_override",
    "plain",
    "recipes_dir",
    "validate",
]
