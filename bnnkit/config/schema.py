"""The sections of a recipe as frozen dataclasses (``data:`` is :class:`bnnkit.data.DataConfig`).

Each section checks its own ranges and choices in ``__post_init__`` (so a section built in
Python is checked too), raising a :class:`~bnnkit.errors.ConfigError` located at the field;
:mod:`bnnkit.config.validate` builds sections from YAML values (types coerced by pydantic)
and prefixes the section's dotted location (``stages.1.optimizer.lr``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from bnnkit.data.config import DataConfig
from bnnkit.errors import ConfigError
from bnnkit.methods import Method

OPTIMIZERS = ("sgd", "adam", "adamw")
DECAY_RULES = ("all", "no_1d", "conv_fc_names")
SCHEDULES = ("cosine", "linear", "step", "constant")
AMP_MODES = ("none", "bf16", "fp16")
PROGRESS_MODES = ("auto", "on", "off")


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(
            "is not valid", location=(name,), value=value, allowed=", ".join(map(repr, choices))
        )


def _at_least(name: str, value: Any, low: float, *, strict: bool = False) -> None:
    if not (value > low if strict else value >= low):
        raise ConfigError("is out of range", location=(name,), value=value,
                          allowed=f"a number {'>' if strict else '>='} {low:g}")  # fmt: skip


def _within(name: str, value: Any, low: float, high: float, *, high_open: bool = False) -> None:
    if not (low <= value < high if high_open else low <= value <= high):
        raise ConfigError("is out of range", location=(name,), value=value,
                          allowed=f"[{low:g}, {high:g}{')' if high_open else ']'}")  # fmt: skip


GAMMA_SCHEDULES = ("constant", "step", "linear")
BINARY_OPTIMIZERS = ("bop",)


@dataclass(frozen=True)
class GammaScheduleConfig:
    """``optimizer.binary.gamma_schedule``: Bop's γ as a pure function of the training position
    (``bnnkit.training.bop.gamma_at``), evaluated every step.

    Attributes:
        name: ``constant``; ``step`` (γ · factor^(milestones passed), at whole epochs);
            ``linear`` (from γ to ``final`` over the stage, per step).
        milestones: epochs of the ``step`` decays (the paper's CIFAR-10: every 100).
        factor: the ``step`` multiplier (0.1).
        final: the ``linear`` end value (the paper's ImageNet: 1e-6).
    """

    name: str = "constant"
    milestones: tuple[int, ...] = ()
    factor: float = 0.1
    final: float = 0.0

    def __post_init__(self) -> None:
        _choice("name", self.name, GAMMA_SCHEDULES)
        _within("factor", self.factor, 0.0, 1.0)
        _at_least("final", self.final, 0.0)


@dataclass(frozen=True)
class BinaryOptimizerConfig:
    """``optimizer.binary``: the optimizer of a latent-free method's binary weights (Bop).

    Attributes:
        name: ``bop`` (Helwegen et al., NeurIPS 2019; larq's ``Bop``).
        gamma: the adaptivity rate of the gradient's moving average, in (0, 1] (1e-4).
        threshold: τ, the flip threshold, >= 0 (1e-8).
        gamma_schedule: γ over the stage.
    """

    name: str = "bop"
    gamma: float = 1e-4
    threshold: float = 1e-8
    gamma_schedule: GammaScheduleConfig = field(default_factory=GammaScheduleConfig)

    def __post_init__(self) -> None:
        _choice("name", self.name, BINARY_OPTIMIZERS)
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError("is out of range", location=("gamma",), value=self.gamma,
                              allowed="(0, 1]")  # fmt: skip
        _at_least("threshold", self.threshold, 0.0)


@dataclass(frozen=True)
class ModelConfig:
    """``model:`` section: a registry name plus its options (``num_classes`` comes from data).

    Attributes:
        name: a registered model (``bnnkit list models``).
        options: the model function's keyword options.
        pad_value: what every binary conv pads its binarized input with: 0 (the papers' zero
            padding) or ±1 (trains the network deployment-ready for Larq Compute Engine's and
            OpenVINO's binary kernels; see :class:`bnnkit.nn.BinaryConv2d`).
    """

    name: str = "mlp"
    options: dict[str, Any] = field(default_factory=dict)
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.pad_value, bool) or self.pad_value not in (0.0, 1.0, -1.0):
            raise ConfigError("is not valid", location=("pad_value",), value=self.pad_value,
                              allowed="0 (zero padding), 1 or -1")  # fmt: skip


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
        binary: the optimizer of the binary weights of a latent-free method (``bop``); the
            section above then optimizes every other parameter (larq's ``CaseOptimizer``).
    """

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_rule: str = "all"
    binary: BinaryOptimizerConfig | None = None

    def __post_init__(self) -> None:
        _choice("name", self.name, OPTIMIZERS)
        _choice("decay_rule", self.decay_rule, DECAY_RULES)
        _at_least("lr", self.lr, 0.0, strict=True)
        _at_least("weight_decay", self.weight_decay, 0.0)
        _at_least("momentum", self.momentum, 0.0)


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
        _choice("name", self.name, SCHEDULES)
        _choice("step_at", self.step_at, ("start", "end"))
        _at_least("warmup_epochs", self.warmup_epochs, 0)
        _at_least("min_lr", self.min_lr, 0.0)
        _choice("cosine_offset", self.cosine_offset, (0, 1))


@dataclass(frozen=True)
class TrainingConfig:
    """``training:`` section.

    Attributes:
        epochs: epochs of the stage.
        label_smoothing: cross-entropy label smoothing (Bi-Real's PyTorch recipe: 0.1).
        grad_clip: max gradient norm (clipping after the method's gradient rules), or null.
        amp: ``none``, ``bf16`` or ``fp16`` autocast; bf16 on CUDA and CPU, fp16 on CUDA only
            (ignored on CPU, with a note); fp16 uses a GradScaler, and the method's gradient
            rules see unscaled gradients.
        compile: wrap the model with ``torch.compile``.
        fused_kernels: run the binarizers' activation-sized passes (sign, surrogate gradients,
            per-sample std) as generated kernels, one loop each (``torch.compile`` of those
            functions only; the convolutions stay eager). Needs a C++ compiler on the CPU.
        channels_last: NHWC memory format for the model and the training batches (CUDA and
            CPU; oneDNN's NHWC convolutions made a CPU step 1.2-1.3x faster, BENCHMARKS.md).
        seed: seeds torch, numpy and random, and the data order.
        deterministic: ``torch.use_deterministic_algorithms(True)`` and cudnn deterministic.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:N``.
        sync_bn: convert BatchNorm to SyncBatchNorm under DDP (CUDA only; PyTorch's
            SyncBatchNorm has no CPU kernel, so CPU runs keep per-process statistics).
        eval_every: evaluate every N epochs (the last epoch is always evaluated).
        checkpoint_every_steps: also write a step checkpoint every N optimizer steps inside
            epochs (``checkpoints/step-<step>.pt``; 0: at epoch ends only). A run resumed from
            one continues exactly (data order, augmentation, trackers, schedule position).
        keep_checkpoints: step checkpoints kept (the newest N; older ones are deleted).
        auto_resume: continue from the run directory's newest checkpoint when it holds one,
            without ``--resume`` (what an elastic restart needs); ``null``: on under torchrun.
    """

    epochs: int = 10
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: str = "none"
    compile: bool = False
    fused_kernels: bool = False
    channels_last: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    sync_bn: bool = False
    eval_every: int = 1
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    auto_resume: bool | None = None

    def __post_init__(self) -> None:
        _at_least("epochs", self.epochs, 1)
        _at_least("checkpoint_every_steps", self.checkpoint_every_steps, 0)
        _at_least("keep_checkpoints", self.keep_checkpoints, 1)
        _choice("amp", self.amp, AMP_MODES)
        _within("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        if self.grad_clip is not None:
            _at_least("grad_clip", self.grad_clip, 0.0, strict=True)
        _at_least("eval_every", self.eval_every, 1)


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
        _at_least("temperature", self.temperature, 0.0, strict=True)
        _within("alpha", self.alpha, 0.0, 1.0)


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
        _at_least("log_every", self.log_every, 1)
        _choice("progress", self.progress, PROGRESS_MODES)


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
        _at_least("every", self.every, 1)
        _at_least("hist_every", self.hist_every, 0)
        _at_least("hist_bins", self.hist_bins, 1)


@dataclass(frozen=True)
class StageConfig:
    """One training stage, fully resolved."""

    name: str
    method: Method
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    training: TrainingConfig
    kd: KDConfig


def plain(obj: Any) -> Any:
    """A section (or a value) as plain YAML/JSON data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [plain(v) for v in obj]
    return obj


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
            "data": plain(self.data),
            "model": {
                "name": self.model.name,
                **self.model.options,
                **({"pad_value": self.model.pad_value} if self.model.pad_value else {}),
            },
            "logging": plain(self.logging),
            "diagnostics": plain(self.diagnostics),
            "stages": [
                {
                    "name": s.name,
                    "method": s.method.to_config(),
                    "optimizer": plain(s.optimizer),
                    "schedule": plain(s.schedule),
                    "training": plain(s.training),
                    "kd": plain(s.kd),
                }
                for s in self.stages
            ],
        }


STAGE_KEYS = ("method", "optimizer", "schedule", "training", "kd")
TOP_KEYS = ("name", "base", "data", "model", "logging", "diagnostics", "stages", *STAGE_KEYS)
SECTION_TYPES: dict[str, type] = {
    "data": DataConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "training": TrainingConfig,
    "kd": KDConfig,
    "logging": LoggingConfig,
    "diagnostics": DiagnosticsConfig,
}
