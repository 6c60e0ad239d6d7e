"""``bnnkit.train``: a whole run (run directory, stages, resume, distillation, DDP).

Run directory (``./runs/<recipe>-<YYYYmmdd-HHMMSS>/`` unless ``out`` is given)::

    config.yaml        fully resolved recipe, versions, git revision
    metrics.jsonl      one JSON object per event (train / epoch)
    checkpoints/       last.pt (every epoch), best.pt (final stage), <stage>-best.pt (others)
    summary.json       best / final top-1 and top-5, time, final dynamics, per stage
    dynamics/          tracker dumps and histograms (see :mod:`bnnkit.diagnostics.files`)
    tensorboard/       event files (when tensorboard is installed)
"""

from __future__ import annotations

import contextlib
import json
import platform
import random
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from bnnkit._version import __version__
from bnnkit.data import build_data
from bnnkit.diagnostics import Dynamics
from bnnkit.diagnostics import files as dynfiles
from bnnkit.methods import binarize_, binary_layers, get_method
from bnnkit.models import create_model
from bnnkit.train import checkpoint as ck
from bnnkit.train.config import RunConfig, StageConfig, load_recipe, parse_override
from bnnkit.train.distributed import Dist, process_group
from bnnkit.train.engine import EpochResult, StageProgress, StageTrainer, evaluate
from bnnkit.train.logging import RunLogger
from bnnkit.train.losses import TaskLoss
from bnnkit.train.optim import build_optimizer


@dataclass
class RunResult:
    """What a run produced; accuracies of the final stage, in %."""

    run_dir: Path | None
    best_top1: float
    best_top5: float
    best_epoch: int
    final_top1: float
    final_top5: float
    seconds: float
    stages: list[dict[str, Any]] = field(default_factory=list)
    dynamics: dict[str, float] = field(default_factory=dict)  # final "dyn/<metric>/all" values


def build_model(cfg: RunConfig, stage: StageConfig, num_classes: int) -> nn.Module:
    """The recipe's model with the stage's method attached."""
    model = create_model(cfg.model.name, num_classes=num_classes, **cfg.model.options)
    return binarize_(model, stage.method)


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint was written for and load its weights (eval mode)."""
    spec = ckpt["model_spec"]
    model = create_model(spec["name"], num_classes=spec["num_classes"], **spec["options"])
    binarize_(model, get_method(ckpt["method"]))
    ck.load_model_state(model, ckpt["model"], "checkpoint")
    return model.to(device).eval()


def step_trainer(
    recipe: dict[str, Any], device: torch.device | str = "cpu", *, trackers: bool = False
) -> StageTrainer:
    """A :class:`StageTrainer` for the recipe's first stage with no data, logging or run
    directory: call its ``_step(x, y, state)`` directly (benchmarks, device tests)."""
    from bnnkit.diagnostics import Dynamics
    from bnnkit.train.logging import RunLogger as _Logger

    cfg = load_recipe(recipe)
    stage = cfg.stages[0]
    device = torch.device(device)
    classes = cfg.data.synthetic_classes
    model = build_model(cfg, stage, classes).to(device)
    return StageTrainer(
        stage=stage, model=model, forward_model=model,
        optimizer=build_optimizer(model, stage.method, stage.optimizer), scaler=None,
        loss_fn=TaskLoss(stage.training.label_smoothing, None, 1.0, 1.0), data=None,
        dist=Dist(device=device), logger=_Logger(None, tensorboard=False, progress="off"),
        log_every=10**9, progress=StageProgress(), save=lambda *a: None,
        dynamics=Dynamics(model) if trackers else None, dynamics_every=1,
    )  # fmt: skip


def _git_revision() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _new_run_dir(cfg: RunConfig, out: str | Path | None) -> Path:
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{cfg.name.replace('/', '_')}-{stamp}"
    run_dir = Path(out)
    if (run_dir / "checkpoints").exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; resume it with --resume {run_dir} or choose another --out"
        )
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def _write_config(run_dir: Path, cfg: RunConfig) -> None:
    doc = {
        **cfg.to_dict(),
        "versions": {
            "bnnkit": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
        "git": _git_revision(),
    }
    ck.atomic_write_text(yaml.safe_dump(doc, sort_keys=False), run_dir / "config.yaml")


def _load_teacher(spec: str | nn.Module | None, device: torch.device) -> nn.Module | None:
    if spec is None or isinstance(spec, nn.Module):
        return spec.to(device) if spec is not None else None
    return model_from_checkpoint(ck.load_checkpoint(spec), device)


def _flatten(
    overrides: Sequence[str] | dict[str, Any] | None, sections: dict[str, Any]
) -> dict[str, Any]:
    """Dotted overrides from strings, a dict, and section keyword arguments, in that order."""
    if isinstance(overrides, dict):
        flat = dict(overrides)
    else:
        flat = {".".join(parts): value for parts, value in map(parse_override, overrides or [])}
    for key, value in sections.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def train(
    recipe: str | Path | dict[str, Any] = "quickstart",
    overrides: Sequence[str] | dict[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    teacher: nn.Module | None = None,
    callbacks: Sequence[Callable[[EpochResult], None]] = (),
    **sections: Any,
) -> RunResult:
    """Train a recipe; returns the final stage's best and final accuracy.

    Args:
        recipe: a recipe path, a shipped recipe name (``bnnkit list recipes``) or a dict.
        overrides: dotted ``key=value`` strings or a ``{"training.epochs": 3}`` dict.
        out: run directory (default ``./runs/<recipe>-<date-time>``).
        resume: a run directory (or checkpoint) to continue; its recipe is used, with
            ``overrides`` applied on top (e.g. more epochs).
        teacher: a frozen KD teacher module (overrides ``kd.teacher``).
        callbacks: called with an :class:`EpochResult` after every epoch (on every rank).
        **sections: recipe sections to merge, e.g. ``training={"epochs": 3}``.
    """
    flat = _flatten(overrides, sections)
    ckpt = None
    if resume is not None:
        ckpt = ck.load_checkpoint(resume)
        cfg = load_recipe(ckpt["recipe"], flat)
        run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parents[1]
    else:
        cfg = load_recipe(recipe, flat)
    first = cfg.stages[0].training
    with process_group(first.device) as dist:
        _seed_everything(first.seed, first.deterministic)  # same init on every rank
        if resume is None:
            run_dir = _new_run_dir(cfg, out) if dist.is_main else Path(out or ".")
        if dist.is_main:
            _write_config(run_dir, cfg)
        logger = RunLogger(
            run_dir if dist.is_main else None,
            tensorboard=cfg.logging.tensorboard,
            progress=cfg.logging.progress,
        )
        start = time.time() - (ckpt["seconds"] if ckpt else 0.0)
        data = None
        try:
            data = _build_data(cfg, dist)
            return _run_stages(cfg, ckpt, run_dir, dist, logger, teacher, callbacks, data, start)
        finally:
            if data is not None:
                data.close()
            logger.close()


def _run_stages(
    cfg: RunConfig,
    ckpt: dict | None,
    run_dir: Path,
    dist: Dist,
    logger: RunLogger,
    teacher: nn.Module | None,
    callbacks: Sequence[Callable],
    data: Any,
    start: float,
) -> RunResult:
    logger.message(
        f"bnnkit {__version__}: run {run_dir} | data {data.name} ({data.train.num_samples * dist.world_size} train / {data.val.num_samples * dist.world_size} val) | {dist.world_size} process(es) on {dist.device}"
    )
    start_stage = ckpt["stage_index"] if ckpt else 0
    prev_state = ckpt["model"] if ckpt else None
    results: list[dict[str, Any]] = list(ckpt["stage_results"]) if ckpt else []
    step = ckpt["progress"]["step"] if ckpt else 0
    progress = StageProgress()
    for index in range(start_stage, len(cfg.stages)):
        stage = cfg.stages[index]
        resuming = ckpt is not None and index == start_stage
        if resuming and ckpt["progress"]["epoch"] >= stage.training.epochs:
            ck.set_rng_state(ckpt["rng"])  # the next stage's init draws from the saved stream
            continue  # that stage finished; its weights start the next one
        model = build_model(cfg, stage, data.num_classes).to(dist.device)
        if stage.training.channels_last and dist.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        if resuming:
            ck.load_model_state(model, prev_state, f"{run_dir} (last.pt)")
        elif prev_state is not None:
            added = ck.load_stage_init(model, prev_state, f"stage {cfg.stages[index - 1].name!r}")
            if added:
                logger.message(
                    f"[{stage.name}] new parameters initialised fresh: {', '.join(added[:8])}{' ...' if len(added) > 8 else ''}"
                )
        optimizer = build_optimizer(model, stage.method, stage.optimizer)
        use_scaler = stage.training.amp == "fp16" and dist.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        if stage.training.amp != "none" and dist.device.type != "cuda":
            logger.message(
                f"[{stage.name}] training.amp={stage.training.amp} ignored: autocast is used on CUDA only"
            )
        progress = StageProgress(step=step)
        if resuming:
            optimizer.load_state_dict(ckpt["optimizer"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            progress = StageProgress(**ckpt["progress"])
            ck.set_rng_state(ckpt["rng"])
        forward_model = _wrap(model, stage, dist)
        dyn = _start_dynamics(
            cfg, stage, model, data, step, ckpt if resuming else None, run_dir, dist, logger
        )
        kd_teacher = _load_teacher(
            teacher if teacher is not None else stage.kd.teacher, dist.device
        )
        loss_fn = TaskLoss(
            stage.training.label_smoothing, kd_teacher, stage.kd.alpha, stage.kd.temperature
        )
        last_stage = index == len(cfg.stages) - 1

        def save(
            p: StageProgress,
            is_best: bool,
            *,
            _model=model,
            _opt=optimizer,
            _scaler=scaler,
            _stage=stage,
            _index=index,
            _last=last_stage,
            _dyn=dyn,
        ) -> None:
            if not dist.is_main:
                return
            state = ck.make_checkpoint(
                recipe=cfg.raw, config=cfg.to_dict(), stage_index=_index, stage_name=_stage.name,
                model_spec={"name": cfg.model.name, "options": cfg.model.options, "num_classes": data.num_classes},
                method=_stage.method.to_config(), model=_model.state_dict(), optimizer=_opt.state_dict(),
                scaler=_scaler.state_dict() if _scaler is not None else None, progress=asdict(p),
                rng=ck.rng_state(), stage_results=results, seconds=time.time() - start,
                dynamics=_dyn.state_dict() if _dyn is not None else None,
            )  # fmt: skip
            if is_best:
                ck.atomic_save(
                    state,
                    run_dir / "checkpoints" / ("best.pt" if _last else f"{_stage.name}-best.pt"),
                )
            ck.atomic_save(state, run_dir / "checkpoints" / "last.pt")

        trainer = StageTrainer(
            stage=stage, model=model, forward_model=forward_model, optimizer=optimizer, scaler=scaler,
            loss_fn=loss_fn, data=data, dist=dist, logger=logger, log_every=cfg.logging.log_every,
            progress=progress, save=save, callbacks=callbacks, dynamics=dyn,
            dynamics_every=cfg.diagnostics.every,
            on_epoch_end=_dynamics_writer(cfg, stage, dyn, run_dir, dist, logger, progress),
        )  # fmt: skip
        progress = trainer.fit()
        step = progress.step
        final = next((h for h in reversed(progress.history) if "top1" in h), {})
        results.append(
            {
                "stage": stage.name,
                "method": stage.method.name,
                "epochs": stage.training.epochs,
                "best_top1": progress.best_top1,
                "best_top5": progress.best_top5,
                "best_epoch": progress.best_epoch + 1,
                "final_top1": final.get("top1"),
                "final_top5": final.get("top5"),
                "dynamics": {
                    k: v
                    for k, v in (progress.history[-1] if progress.history else {}).items()
                    if k.startswith("dyn/") and k.endswith("/all")
                },
            }
        )
        prev_state = model.state_dict()
    return _finish(run_dir, results, time.time() - start, dist)


def _start_dynamics(
    cfg: RunConfig,
    stage: StageConfig,
    model: nn.Module,
    data: Any,
    step: int,
    ckpt: dict | None,
    run_dir: Path,
    dist: Dist,
    logger: RunLogger,
) -> Dynamics | None:
    """The stage's trackers (None when disabled or nothing is binarized); a resumed stage
    continues the saved counts, a new one counts from its starting weights."""
    has_binary = any(m.weight_binarizer is not None for _, m in binary_layers(model))
    if not cfg.diagnostics.enabled or not has_binary:
        return None
    dyn = Dynamics(model, max_steps=stage.training.epochs * len(data.train))
    dyn.reset(step)
    if ckpt is not None:
        if ckpt.get("dynamics"):
            dyn.load_state_dict(ckpt["dynamics"])
        else:
            logger.message(
                f"[{stage.name}] the checkpoint has no tracker state: dynamics count from now"
            )
    elif dist.is_main:
        dynfiles.write_init(run_dir, stage.name, dyn)
        dynfiles.append_histograms(run_dir, stage.name, 0, step, dyn, cfg.diagnostics.hist_bins)
    return dyn


def _dynamics_writer(
    cfg: RunConfig,
    stage: StageConfig,
    dyn: Dynamics | None,
    run_dir: Path,
    dist: Dist,
    logger: RunLogger,
    progress: StageProgress,
) -> Callable[[int], None] | None:
    """Epoch-end writer of the flip dump and (every ``hist_every`` epochs) the histograms."""
    if dyn is None or not dist.is_main:
        return None
    diag = cfg.diagnostics

    def write(epoch: int) -> None:
        dynfiles.write_flips(
            run_dir, stage.name, epoch, progress.step, dyn, keep=diag.keep_dumps, every=diag.every
        )
        done = epoch + 1
        if done == stage.training.epochs or (diag.hist_every and done % diag.hist_every == 0):
            records = dynfiles.append_histograms(
                run_dir, stage.name, done, progress.step, dyn, diag.hist_bins
            )
            logger.histograms(records, progress.step)

    return write


def _build_data(cfg: RunConfig, dist: Dist) -> Any:
    """Rank 0 builds (and, with ``download: true``, fetches) the data first; the others follow."""

    def build() -> Any:
        seed = cfg.stages[0].training.seed
        return build_data(
            cfg.data, device=dist.device, rank=dist.rank, world_size=dist.world_size, seed=seed
        )

    if not dist.enabled:
        return build()
    data = build() if dist.is_main else None
    dist.barrier()
    return data if data is not None else build()


def _wrap(model: nn.Module, stage: StageConfig, dist: Dist) -> nn.Module:
    forward_model: nn.Module = model
    if dist.enabled:
        if stage.training.sync_bn and dist.device.type == "cuda":  # SyncBatchNorm is CUDA-only
            forward_model = nn.SyncBatchNorm.convert_sync_batchnorm(forward_model)
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        forward_model = nn.parallel.DistributedDataParallel(forward_model, device_ids=ids)
    if stage.training.compile:
        forward_model = torch.compile(forward_model)
    return forward_model


def _finish(run_dir: Path, results: list[dict[str, Any]], seconds: float, dist: Dist) -> RunResult:
    last = results[-1] if results else {}
    result = RunResult(
        run_dir=run_dir if dist.is_main else None,
        best_top1=last.get("best_top1", float("nan")), best_top5=last.get("best_top5", float("nan")),
        best_epoch=last.get("best_epoch", 0), final_top1=last.get("final_top1") or float("nan"),
        final_top5=last.get("final_top5") or float("nan"), seconds=seconds, stages=results,
        dynamics=last.get("dynamics") or {},
    )  # fmt: skip
    if dist.is_main:
        summary = {k: v for k, v in asdict(result).items() if k != "run_dir"}
        ck.atomic_write_text(json.dumps(summary, indent=2), run_dir / "summary.json")
    return result


def format_result(result: RunResult) -> str:
    """The table ``bnnkit train`` prints at the end."""
    rows = [
        (
            "stage",
            "method",
            "epochs",
            "best top-1",
            "best top-5",
            "best epoch",
            "final top-1",
            "final top-5",
        )
    ]
    for s in result.stages:
        rows.append(
            (
                s["stage"],
                s["method"],
                str(s["epochs"]),
                f"{s['best_top1']:.2f}",
                f"{s['best_top5']:.2f}",
                str(s["best_epoch"]),
                f"{s['final_top1']:.2f}",
                f"{s['final_top5']:.2f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"run directory: {result.run_dir}   time: {result.seconds:.1f}s")
    return "\n".join(lines)


def check_data_overrides(overrides: Sequence[str], command: str) -> None:
    """Evaluation commands change the data only: refuse any other ``key=value``."""
    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise ValueError(f"{command} takes data.* overrides only, got {bad}")


def evaluate_checkpoint(
    path: str | Path, overrides: Sequence[str] = (), device: str = "auto"
) -> tuple[dict[str, float], Path]:
    """Top-1 / top-5 of a checkpoint on its recipe's validation data (``data.*`` overrides).

    A run directory means its ``best.pt`` (else ``last.pt``).
    """
    path = ck.resolve_checkpoint(path)
    ckpt = ck.load_checkpoint(path)
    check_data_overrides(overrides, "eval")
    cfg = load_recipe(ckpt["recipe"], list(overrides))
    with process_group(device) as dist:
        data = build_data(cfg.data, device=dist.device, rank=dist.rank, world_size=dist.world_size)
        if data.num_classes != ckpt["model_spec"]["num_classes"]:
            raise ValueError(
                f"the data has {data.num_classes} classes but the checkpoint's model {ckpt['model_spec']['num_classes']}"
            )
        model = model_from_checkpoint(ckpt, dist.device)
        return evaluate(model, data.val, dist, contextlib.nullcontext), path
