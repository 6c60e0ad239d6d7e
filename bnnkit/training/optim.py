"""Optimizers with the papers' weight-decay groups, and learning-rate schedules.

Schedules are pure functions of (epoch, position in epoch): the learning rate is *derived*
from the training position, so a resumed run needs no scheduler state to continue exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bnnkit.config import OptimizerConfig, ScheduleConfig
from bnnkit.errors import ConfigError
from bnnkit.methods import Method
from bnnkit.training.bop import CaseOptimizer, build_bop


def _decayed(rule: str, name: str, p: torch.Tensor) -> bool:
    if rule == "no_1d":
        return p.ndim > 1
    if rule == "conv_fc_names":
        return "conv" in name or "fc" in name
    return True


def param_groups(model: nn.Module, method: Method, cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """The method's parameter groups, each split by the recipe's decay rule.

    A method group that sets ``weight_decay`` keeps it; otherwise parameters the rule selects
    get ``cfg.weight_decay`` and the others 0. ``lr_scale`` of a group multiplies the lr.
    Every group carries ``name`` and ``lr_scale`` so schedules can set its lr.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    groups: list[dict[str, Any]] = []
    for group in method.param_groups(model):
        params = [p for p in group["params"] if p.requires_grad]
        scale = float(group.get("lr_scale", 1.0))
        if "weight_decay" in group:
            kept = {"name": group["name"], "params": params,
                    "weight_decay": float(group["weight_decay"]), "lr_scale": scale}  # fmt: skip
            if "optimizer" in group:  # a latent-free method's binary weights (Bop)
                kept["optimizer"] = group["optimizer"]
            groups.append(kept)
            continue
        decay = [p for p in params if _decayed(cfg.decay_rule, names.get(id(p), ""), p)]
        ids = {id(p) for p in decay}
        rest = [p for p in params if id(p) not in ids]
        for suffix, ps, wd in (("", decay, cfg.weight_decay), ("_no_decay", rest, 0.0)):
            if ps:
                groups.append(
                    {
                        "name": group["name"] + suffix,
                        "params": ps,
                        "weight_decay": wd,
                        "lr_scale": scale,
                    }
                )
    seen = [id(p) for g in groups for p in g["params"]]
    if len(seen) != len(set(seen)):
        raise ValueError(f"method {method.name!r} put a parameter into two optimizer groups")
    return groups


def build_optimizer(
    model: nn.Module, method: Method, cfg: OptimizerConfig
) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW over :func:`param_groups`; with a latent-free
    method (``bop``) a :class:`~bnnkit.training.bop.CaseOptimizer`: ``optimizer.binary`` (Bop)
    over the method's binary group, the section's optimizer over the rest."""
    groups = param_groups(model, method, cfg)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    binary = [g for g in groups if g.get("optimizer") == "binary"]
    rest = [g for g in groups if g.get("optimizer") != "binary"]
    if bool(binary) != (cfg.binary is not None):
        why = (f"method {method.name!r} has binary weights for a binary optimizer: set "
               "optimizer.binary (e.g. {name: bop, gamma: 1.0e-4, threshold: 1.0e-8})"
               if binary else f"is set, but method {method.name!r} has latent weights for "
               "the ordinary optimizer; only a latent-free method (bop) takes one")  # fmt: skip
        raise ConfigError(why, location=("optimizer", "binary"))
    if cfg.name == "sgd":
        default = torch.optim.SGD(rest, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    else:
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        default = cls(rest, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if not binary:
        return default
    assert cfg.binary is not None
    return CaseOptimizer(default, build_bop(binary, cfg.binary))


def lr_at(cfg: ScheduleConfig, base_lr: float, epoch: float, epochs: int) -> float:
    r"""Learning rate at (fractional) ``epoch`` of ``epochs``.

    * warm-up (``e < w``): :math:`lr \cdot (e + 1) / w` (ReCU, OvSW).
    * ``cosine``: :math:`lr_{min} + \tfrac12 lr (1 + \cos(\pi (e - w + o) / (E - w + o)))`
      with offset ``o`` (ReCU: 1, so T_max = E - 4 for w = 5; OvSW: 0 with floor 1e-5).
    * ``linear``: :math:`lr (1 - (e + s) / E)` with ``s = 1`` when stepped at the epoch
      start (ReActNet) and 0 at the end (ReBNN).
    * ``step``: :math:`lr \cdot \gamma^{|\{m \le e\}|}`; ``constant``: ``lr``.
    """
    w = cfg.warmup_epochs
    if epoch < w:
        return (
            base_lr * (math.floor(epoch) + 1) / w if not cfg.per_step else base_lr * (epoch + 1) / w
        )
    if cfg.name == "cosine":
        o = cfg.cosine_offset
        span = max(epochs - w + o, 1)
        return cfg.min_lr + 0.5 * base_lr * (1 + math.cos(math.pi * (epoch - w + o) / span))
    if cfg.name == "linear":
        shift = 1 if cfg.step_at == "start" else 0
        return max(base_lr * (1 - (epoch + shift) / epochs), 0.0)
    if cfg.name == "step":
        return base_lr * cfg.gamma ** sum(1 for m in cfg.milestones if m <= epoch)
    return base_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write ``lr * lr_scale`` into every parameter group."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
