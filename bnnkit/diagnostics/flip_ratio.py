"""larq's ``FlipRatio`` for a loop of your own, on top of :class:`~bnnkit.diagnostics.Dynamics`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from bnnkit.diagnostics import names as N
from bnnkit.diagnostics.dynamics import Dynamics


class FlipRatio:
    """larq-style flip ratio for your own training loop.

    ``update_state()`` after each optimizer step; ``result()`` gives, per layer and ``all``,
    the mean fraction of weights whose sign changed at an update, since the last
    ``reset_states()``. Each update compares to the previous update's signs.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None) -> None:
        self.tracker = Dynamics(model, layers)

    def update_state(self) -> None:
        self.tracker.update()

    def result(self) -> dict[str, float]:
        m = self.tracker.step_metrics(reset=False)
        prefix = f"{N.FLIP}/"
        return {k[len(prefix) :]: float(v) for k, v in m.items() if k.startswith(prefix)}

    def reset_states(self) -> None:
        self.tracker.clear_window()
