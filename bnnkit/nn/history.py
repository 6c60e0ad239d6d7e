"""The per-layer sign history: one record of each binary weight's sign, updated once per step.

Three consumers need to know which binary weights flipped sign: the training-dynamics trackers
(flip, oscillation, silent), ReBNN (γ from the flip proportion) and OvSW (the silence tracker).
Each used to keep its own copy (OvSW a full float copy of W); now every binary-weight layer has
one :class:`SignHistory` (``layer.sign_history``, built by :func:`bnnkit.binarize_`) and they
all read it.

Contract (the engine keeps it; a hand-written loop must too)::

    optimizer.step()
    update_sign_history(model)        # once per step, before method.after_optimizer_step
    method.after_optimizer_step(layers, state)

The sign is that of :meth:`BinaryLayer.sign_input` (what the weight binarizer takes the sign
of; sign(0) = +1). Readers call :meth:`SignHistory.checked` to read it, which raises
:class:`SignHistoryError` when the history was not updated since their previous read (a loop
that forgot the call would otherwise report no flips at all).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnnkit.errors import BnnkitError


class SignHistoryError(BnnkitError, RuntimeError):
    """A sign history read twice without an update in between (a loop without the update)."""

    exit_status = 1


class SignHistory(nn.Module):
    """The sign of one layer's binary weight at the last update, and the flips of that update.

    Buffers (in ``state_dict``, so a resumed run continues exactly; 2 bytes per weight):

    * ``negative`` (bool, shape of W): ``sign_input(W) < 0`` at the last update;
    * ``flipped`` (bool): the weights whose sign changed at the last update (none after
      construction or :meth:`reset`).

    ``updates`` counts the updates this object has seen (a host ``int``, not saved): readers
    compare it with the count they last read (:meth:`checked`).

    Args:
        signed: the tensor whose sign is recorded now (``layer.sign_input()``).
    """

    negative: Tensor
    flipped: Tensor

    def __init__(self, signed: Tensor) -> None:
        super().__init__()
        signed = signed.detach()
        self.register_buffer("negative", signed < 0)
        self.register_buffer("flipped", torch.zeros_like(signed, dtype=torch.bool))
        self.updates = 0

    @torch.no_grad()
    def update(self, signed: Tensor) -> None:
        """Record the sign of ``signed`` now: ``flipped = negative_now != negative``."""
        negative = signed.detach() < 0
        torch.ne(negative, self.negative, out=self.flipped)
        self.negative.copy_(negative)
        self.updates += 1

    @torch.no_grad()
    def reset(self, signed: Tensor) -> None:
        """Take the sign of ``signed`` as the reference, with no flips (a stage start)."""
        self.negative.copy_(signed.detach() < 0)
        self.flipped.zero_()
        self.updates += 1

    def checked(self, seen: int | None, reader: str) -> int:
        """The update count, after checking it moved since ``seen`` (the reader's last read;
        ``None`` at its first read). Store the result as the reader's new ``seen``."""
        if seen is not None and seen == self.updates:
            raise SignHistoryError(
                f"{reader} read the sign history twice without an update: call "
                "bnnkit.nn.update_sign_history(model) once per step, after optimizer.step() "
                "and before method.after_optimizer_step() (bnnkit's engine does)"
            )
        return self.updates

    def extra_repr(self) -> str:
        return f"shape={tuple(self.negative.shape)}, updates={self.updates}"
