"""Bop, the latent-free binary optimizer (Helwegen et al., NeurIPS 2019, "Latent Weights Do
Not Exist"), and the case optimizer that runs it next to an ordinary one (larq's ``Bop`` and
``CaseOptimizer``; the numerical spec, from larq fe3ce52 and the paper authors' code, is
``docs/specs/bop.md``).

Bop holds the binary weights as ±1 and keeps, per weight, an exponential moving average of
its gradient; a weight flips when the average is strong enough and agrees with it::

    m <- m + γ (g - m)                 (= (1 - γ) m + γ g; m starts at 0)
    w <- -w   where  w · m > τ         (strict; w stays exactly ±1)

The schedules are pure functions of the training position (:func:`gamma_at`), written into
the Bop groups every step by the trainer, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from bnnkit.config.schema import BinaryOptimizerConfig, GammaScheduleConfig
from bnnkit.errors import ConfigError


def gamma_at(schedule: GammaScheduleConfig, gamma: float, epoch: float, epochs: int) -> float:
    r"""γ at (fractional) ``epoch`` of ``epochs``.

    ``constant``: γ. ``step``: :math:`\gamma \cdot f^{|\{m \le \lfloor e \rfloor\}|}` over the
    milestones. ``linear``: :math:`\gamma_{final} + (\gamma - \gamma_{final})(1 - e / E)`.
    """
    if schedule.name == "step":
        passed = sum(1 for m in schedule.milestones if m <= math.floor(epoch))
        return gamma * schedule.factor**passed
    if schedule.name == "linear":
        return schedule.final + (gamma - schedule.final) * (1.0 - epoch / max(epochs, 1))
    return gamma


class Bop(torch.optim.Optimizer):
    """Bop over ±1 weights; see the module docstring for the update.

    Construction writes ``W <- sign(W)`` (sign(0) = +1) into every parameter, so the stored
    weight is the binary one from the first step (idempotent on a resumed model). Refused
    (:class:`~bnnkit.errors.ConfigError`): γ outside (0, 1], τ < 0, a non-zero
    ``weight_decay``, a parameter that is not float32 (m and the flip test need it), and a
    parameter whose entries all have one sign (an all-positive init: every weight would start
    at +1). An ``lr`` in a group (the trainer writes one into every group) is ignored.

    Departures from larq: at ``w · m == τ`` larq writes +1 whatever the weight was; here the
    weight is kept (the strict rule); no weight decay at all.
    """

    def __init__(self, params: Iterable[Any], gamma: float = 1e-4, threshold: float = 1e-8) -> None:
        _check(gamma, threshold)
        super().__init__(params, {"gamma": float(gamma), "threshold": float(threshold)})
        for group in self.param_groups:
            _check(group["gamma"], group["threshold"])
            if group.get("weight_decay", 0.0):
                raise ConfigError("must be 0 for Bop (a ±1 weight has nothing to decay)",
                                  location=("weight_decay",), value=group["weight_decay"])  # fmt: skip
            for p in group["params"]:
                _sign_init(p)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            gamma, threshold = group["gamma"], group["threshold"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "m" not in state:
                    state["m"] = torch.zeros_like(p)
                m: Tensor = state["m"]
                m.add_(p.grad - m, alpha=gamma)
                p.mul_(torch.where(p * m > threshold, -1.0, 1.0).to(p.dtype))
        return loss


def _check(gamma: float, threshold: float) -> None:
    if not 0.0 < gamma <= 1.0:
        raise ConfigError("is out of range for bop", location=("gamma",), value=gamma,
                          allowed="(0, 1]")  # fmt: skip
    if not threshold >= 0.0:
        raise ConfigError("is out of range for bop", location=("threshold",), value=threshold,
                          allowed="a number >= 0")  # fmt: skip


@torch.no_grad()
def _sign_init(p: Tensor) -> None:
    if p.dtype != torch.float32:
        raise ConfigError(f"must be float32 for Bop (got {p.dtype}); keep the binary weights "
                          "in float32", location=("params",))  # fmt: skip
    if p.numel() > 1 and ((p > 0).all() or (p < 0).all()):
        raise ConfigError("holds weights of one sign only: Bop would start every weight at the "
                          "same value; initialise them zero-mean (e.g. kaiming)",
                          location=("params",))  # fmt: skip
    p.copy_(torch.where(p >= 0, 1.0, -1.0).to(p.dtype))


class CaseOptimizer(torch.optim.Optimizer):
    """Two optimizers as one (larq's ``CaseOptimizer``): ``default`` for every parameter but the
    binary weights, ``binary`` (Bop) for those.

    ``param_groups`` are the children's own group dicts, the default's first, so the trainer's
    learning rate and a GradScaler reach every group; ``step``/``zero_grad`` act on both; the
    state dict nests them (``{"default": ..., "binary": ...}``). A parameter in both children
    is refused.
    """

    def __init__(self, default: torch.optim.Optimizer, binary: torch.optim.Optimizer) -> None:
        ids = [id(p) for g in default.param_groups for p in g["params"]]
        both = set(ids) & {id(p) for g in binary.param_groups for p in g["params"]}
        if both:
            raise ConfigError(f"{len(both)} parameter(s) are claimed by both the default and the "
                              "binary optimizer", location=("optimizer", "binary"))  # fmt: skip
        self.default, self.binary = default, binary
        self.defaults = {}
        self.state = {}  # the children keep their own
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}
        self._optimizer_state_dict_pre_hooks: dict = {}
        self._optimizer_state_dict_post_hooks: dict = {}
        self._optimizer_load_state_dict_pre_hooks: dict = {}
        self._optimizer_load_state_dict_post_hooks: dict = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The children's groups, default first (looked up each time: ``load_state_dict``
        gives a child new group dicts)."""
        return [*self.default.param_groups, *self.binary.param_groups]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = self.default.step(closure)
        self.binary.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.default.zero_grad(set_to_none=set_to_none)
        self.binary.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"default": self.default.state_dict(), "binary": self.binary.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"default", "binary"}:
            raise ConfigError("is not the state of a default + binary (Bop) optimizer; the "
                              "checkpoint was trained with another optimizer",
                              location=("optimizer",))  # fmt: skip
        self.default.load_state_dict(state_dict["default"])
        self.binary.load_state_dict(state_dict["binary"])

    def set_binary_position(self, cfg: BinaryOptimizerConfig, epoch: float, epochs: int) -> None:
        """Write γ of position ``epoch`` (fractional) and τ into every binary group."""
        gamma = gamma_at(cfg.gamma_schedule, cfg.gamma, epoch, epochs)
        for group in self.binary.param_groups:
            group["gamma"], group["threshold"] = gamma, cfg.threshold


def build_bop(groups: list[dict[str, Any]], cfg: BinaryOptimizerConfig) -> Bop:
    """Bop over the binary ``groups`` (their ``weight_decay`` must be 0), from ``cfg``."""
    return Bop([{k: v for k, v in g.items() if k != "optimizer"} for g in groups],
               gamma=cfg.gamma, threshold=cfg.threshold)  # fmt: skip
