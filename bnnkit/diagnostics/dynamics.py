r"""Training-dynamics trackers: flips, oscillation, back-and-forth, silent and dead weights.

The pathologies the mission's papers name, measured for any method on the training device:

- **flip rate** (larq's ``FlipRatio``): per update, the fraction of a layer's weights whose
  sign changed since the previous update;
- **oscillation** (ReBNN's epoch-wise weight-oscillation ratio): the epoch mean of the
  per-update flip rates;
- **back-and-forth** (the two-step oscillation of ReBNN's proof): weights that flipped at
  this update *and* at the previous one, i.e. a flip undone at the next update;
- **silent** (OvSW's paper-level definition, Fig. 1): weights whose sign never differed from
  their sign at the start of tracking (construction, or the start of a stage);
- **dead**: weights whose ``.grad`` is exactly 0 after ``backward`` (no task gradient: the
  clipped STE's cut-off outside [-1, 1]; the engine reads it before the method's gradient
  rules, so AGS, SAD and ReBNN's reconstruction gradient do not count as task gradient).
  ReCU's clamp alone does not make a weight dead by this definition, because its weight
  standardisation passes a (shared, small) gradient to every weight; ReCU reports its
  clamped fraction and τ as method metrics (``recu/clamped``, ``recu/tau``);
- **quantization error** :math:`\|\tilde w - \alpha \odot \mathrm{sign}(\tilde w)\|^2 / n` with
  the L2-optimal per-output-channel :math:`\alpha_c = \mathrm{mean}|\tilde w_c|`, and the
  **Laplace entropy** :math:`1 + \ln(2\,\mathrm{mean}|\tilde w|)` (ReCU §2.5), where
  :math:`\tilde w` is the weight as the sign sees it (the layer's
  :meth:`~bnnkit.nn.BinaryLayer.sign_input`: ReCU's standardised, clamped weight, IR-Net's
  standardised weight, the latent weight for every element-wise binarizer).

Per-weight state (4 bytes per tracked weight, two ``int16`` buffers per layer):

- ``state``: the sign at the previous update and the cumulative flip count ``c`` (saturating
  at 32767), stored as ``c`` for a non-negative sign and ``~c = -c - 1`` for a negative one;
- ``last``: the step of the last flip, relative to the step at construction, in units of
  ``2**shift`` steps (``shift`` is the smallest ``k`` with ``max_steps >> k <= 32767``; 0
  when ``max_steps`` is None, and then steps beyond 32767 saturate), stored as ``t`` or, when
  the weight flipped at the previous update, ``~t`` (that bit drives back-and-forth).

Signs are read from each layer's shared :class:`~bnnkit.nn.SignHistory` (the sign of
:meth:`~bnnkit.nn.BinaryLayer.sign_input`: the latent weight, except for ReCU and IR-Net, whose
sign is that of the channel-centred weight), which the engine updates once per step. In a loop
of your own that does not update it (``bnnkit.nn.update_sign_history``), :meth:`Dynamics.update`
updates it itself; a module tracked by name that is not a binary layer gets a private one.

Everything is updated with device tensor ops; nothing reads a value back to the host except
:meth:`Dynamics.result`, the dumps and the histograms (called at log intervals / epoch ends).
A weight that flips and flips back between two updates (``diagnostics.every`` > 1) is not
seen; with ``every = 1`` every optimizer step is an update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bnnkit.diagnostics.weights import laplace_entropy, quantization_error, signed_tensor
from bnnkit.errors import ConfigError
from bnnkit.nn import BinaryLayer, SignHistory

INT16_MAX = 32767


def _decode(v: Tensor) -> tuple[Tensor, Tensor]:
    """``(value, flag)`` from the sign-bit encoding ``v = value`` or ``~value``."""
    flag = v < 0
    return torch.where(flag, ~v, v), flag


# -- the tracker ------------------------------------------------------------------------------------


class Dynamics(nn.Module):
    """Per-layer flip / back-and-forth / silent / dead trackers for a model's binary weights.

    Use it in any training loop::

        dyn = Dynamics(model)
        for x, y in loader:
            loss = criterion(model(x), y)
            opt.zero_grad(); loss.backward()
            dyn.record_gradients()          # dead weights (optional)
            opt.step()
            dyn.update()                    # flips, back-and-forth, counts
        print(dyn.result())                 # {"flip/layer1.0.conv1": ..., "silent/all": ...}

    Args:
        model: the model; by default every :class:`~bnnkit.nn.BinaryConv2d` /
            :class:`~bnnkit.nn.BinaryLinear` with a weight binarizer is tracked.
        layers: names of submodules whose ``.weight`` to track instead (any module with a
            ``weight`` parameter).
        max_steps: the most steps the tracking will span; sets the resolution of the stored
            last-flip step (exact up to 32767 steps, else ``2**k`` steps).

    Metric keys (see the module docstring for the definitions): ``flip/<layer>``,
    ``backforth/<layer>``, ``dead/<layer>``, ``silent/<layer>``, ``qerr/<layer>``,
    ``entropy/<layer>`` and, per epoch, ``oscillation/<layer>``; ``<layer>`` = ``all`` for
    all tracked layers together.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        *,
        max_steps: int | None = None,
    ) -> None:
        super().__init__()
        modules = dict(model.named_modules())
        if layers is None:
            chosen = [
                (n, m) for n, m in modules.items() if isinstance(m, BinaryLayer) and m.binary_weight
            ]
        else:
            weighted = [
                n for n, m in modules.items() if isinstance(getattr(m, "weight", None), Tensor)
            ]
            unknown = [n for n in layers if n not in modules]
            if unknown:
                raise ConfigError(
                    "are not submodules of the model", location=("layers",), value=unknown,
                    allowed=", ".join(weighted[:12]) + (" ..." if len(weighted) > 12 else ""),
                )  # fmt: skip
            no_weight = [n for n in layers if n not in weighted]
            if no_weight:
                raise ConfigError(
                    "have no .weight tensor to track", location=("layers",), value=no_weight
                )
            chosen = [(n, modules[n]) for n in layers]
        if not chosen:
            raise ConfigError(
                "the model has no binary-weight layers to track; pass layers=[...] with the "
                "names of the modules whose .weight to track"
            )
        self.layer_names = [n for n, _ in chosen]
        self._modules_tracked = [m for _, m in chosen]  # plain list: not registered as children
        # each layer's shared sign history, or a private one (modules that are not binary layers)
        self._shared = [
            isinstance(m, BinaryLayer) and m.sign_history is not None for m in self._modules_tracked
        ]
        self._histories = [
            m.sign_history if shared else SignHistory(signed_tensor(m))
            for m, shared in zip(self._modules_tracked, self._shared, strict=True)
        ]
        self._seen = [h.updates for h in self._histories]
        self.shift = 0
        if max_steps is not None and max_steps > INT16_MAX:
            self.shift = math.ceil(math.log2((max_steps + 1) / (INT16_MAX + 1)))
            while (max_steps >> self.shift) > INT16_MAX:
                self.shift += 1
        L = len(chosen)
        device = chosen[0][1].weight.device
        for i, (_, m) in enumerate(chosen):
            w = m.weight.detach()
            self.register_buffer(
                f"state{i}", torch.zeros(w.shape, dtype=torch.int16, device=device)
            )
            self.register_buffer(f"last{i}", torch.zeros(w.shape, dtype=torch.int16, device=device))
        numel = torch.tensor([m.weight.numel() for _, m in chosen], dtype=torch.float64)
        self.register_buffer("numel", numel.to(device), persistent=False)
        self.register_buffer("start_step", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64, device=device))
        # accumulators: rows flip, backforth, dead (sums of per-update fractions per layer + all);
        # saved, so that a run resumed inside an epoch (or a log window) reports the same means
        for prefix in ("win", "ep"):
            self.register_buffer(f"{prefix}_sums", torch.zeros(3, L + 1, dtype=torch.float64, device=device))  # fmt: skip
            self.register_buffer(f"{prefix}_counts", torch.zeros(2, dtype=torch.float64, device=device))  # fmt: skip
        self.reset()

    # -- state ----------------------------------------------------------------------------------
    _ACCUMULATORS = ("win_sums", "win_counts", "ep_sums", "ep_counts")

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As ``nn.Module``'s; a state saved without the accumulators (older checkpoints,
        written at epoch ends, where they are zero) loads with them zero."""
        state = dict(state_dict)
        for key in self._ACCUMULATORS:
            state.setdefault(key, torch.zeros_like(getattr(self, key)))
        return super().load_state_dict(state, strict, assign)

    def _state(self, i: int) -> Tensor:
        return getattr(self, f"state{i}")

    def _last(self, i: int) -> Tensor:
        return getattr(self, f"last{i}")

    def _weights(self) -> list[Tensor]:
        return [m.weight.detach() for m in self._modules_tracked]

    def weights(self) -> dict[str, Tensor]:
        """The tracked layers' latent weights now (detached), by layer name."""
        return dict(zip(self.layer_names, self._weights(), strict=True))

    def _signed(self) -> list[Tensor]:
        """What each layer takes the sign of (:func:`signed_tensor`; the weight for most)."""
        return [signed_tensor(m) for m in self._modules_tracked]

    def _negatives(self) -> list[Tensor]:
        """Each layer's sign now (``True`` = negative), from its sign history: a shared history
        the loop did not update since the last read, and a private one, are updated here."""
        out = []
        for i, (module, history) in enumerate(
            zip(self._modules_tracked, self._histories, strict=True)
        ):
            if not self._shared[i] or history.updates == self._seen[i]:
                history.update(signed_tensor(module))
            self._seen[i] = history.updates
            out.append(history.negative)
        return out

    @torch.no_grad()
    def reset(self, step: int = 0) -> None:
        """Make the current signs the reference; clear counts, last flips and accumulators."""
        for i, w in enumerate(self._signed()):
            self._state(i).copy_(torch.where(w < 0, -1, 0).to(torch.int16))  # count 0, sign
            self._last(i).zero_()
        self.start_step.fill_(step)
        self.updates.zero_()
        self._clear("win")
        self._clear("ep")

    def clear_window(self) -> None:
        """Start a new window of :meth:`step_metrics` (the epoch means are kept)."""
        self._clear("win")

    def _clear(self, prefix: str) -> None:
        """Zero the window (``win``) or epoch (``ep``) accumulators."""
        getattr(self, f"{prefix}_sums").zero_()
        getattr(self, f"{prefix}_counts").zero_()

    # -- updates --------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, step: int | None = None) -> None:
        """Record the sign changes since the previous update (call after ``optimizer.step``)."""
        rel = self._relative(step)
        flips, backs = [], []
        for i, neg in enumerate(self._negatives()):
            state, last = self._state(i), self._last(i)
            count, was_neg = _decode(state)
            t, flipped_before = _decode(last)
            flip = neg != was_neg
            backs.append((flip & flipped_before).sum())
            flips.append(flip.sum())
            count = torch.where(flip & (count < INT16_MAX), count + 1, count)
            state.copy_(torch.where(neg, ~count, count))
            t = torch.where(flip, rel, t)
            last.copy_(torch.where(flip, ~t, t))
        self.updates.add_(1)
        self._accumulate(0, torch.stack(flips))
        self._accumulate(1, torch.stack(backs))
        for prefix in ("win", "ep"):
            getattr(self, f"{prefix}_counts")[0] += 1

    def _relative(self, step: int | None) -> Tensor:
        """The update's step relative to ``start_step`` in stored units (a device int16)."""
        # the internal counter, or device arithmetic with a Python int (no host-to-device copy)
        rel = self.updates + 1 if step is None else self.start_step.neg().add(int(step))
        return (rel.clamp(min=0) >> self.shift).clamp(max=INT16_MAX).to(torch.int16)

    @torch.no_grad()
    def record_gradients(self) -> None:
        """Record the fraction of weights with an exactly-zero (or no) gradient (after backward)."""
        dead = []
        for m in self._modules_tracked:
            g = m.weight.grad
            dead.append(
                torch.full((), m.weight.numel(), device=self.numel.device)
                if g is None
                else (g == 0).sum()
            )
        self._accumulate(2, torch.stack(dead))
        for prefix in ("win", "ep"):
            getattr(self, f"{prefix}_counts")[1] += 1

    def _accumulate(self, row: int, counts: Tensor) -> None:
        counts = counts.to(torch.float64)
        fractions = torch.cat([counts / self.numel, (counts.sum() / self.numel.sum()).view(1)])
        self.win_sums[row] += fractions
        self.ep_sums[row] += fractions

    # -- metrics --------------------------------------------------------------------------------
    def _names(self) -> list[str]:
        return [*self.layer_names, "all"]

    @torch.no_grad()
    def _weight_stats(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        silent, qerr, ent = [], [], []
        for i, wt in enumerate(self._signed()):
            count, _ = _decode(self._state(i))
            silent.append((count == 0).sum().to(torch.float64))
            qerr.append(quantization_error(wt).to(torch.float64))
            ent.append(laplace_entropy(wt).to(torch.float64))
        n = self.numel
        stats = {
            "silent": torch.cat([torch.stack(silent) / n, (torch.stack(silent).sum() / n.sum()).view(1)]),
            "qerr": torch.stack(qerr),
            "entropy": torch.stack(ent),
        }  # fmt: skip
        for key in ("qerr", "entropy"):
            v = stats[key]
            stats[key] = torch.cat([v, ((v * n).sum() / n.sum()).view(1)])
        for key, values in stats.items():
            for name, v in zip(self._names(), values, strict=True):
                out[f"{key}/{name}"] = v
        return out

    def _means(self, prefix: str, flip_key: str, reset: bool) -> dict[str, Tensor]:
        sums, counts = getattr(self, f"{prefix}_sums"), getattr(self, f"{prefix}_counts")
        out: dict[str, Tensor] = {}
        n_upd, n_grad = int(counts[0]), int(counts[1])  # host read: log interval only
        rows = []
        if n_upd:
            rows += [(flip_key, sums[0] / n_upd), ("backforth", sums[1] / n_upd)]
        if n_grad:
            rows.append(("dead", sums[2] / n_grad))
        for key, values in rows:
            for name, v in zip(self._names(), values.clone(), strict=True):
                out[f"{key}/{name}"] = v
        out.update(self._weight_stats())
        if reset:
            self._clear(prefix)
        return out

    def step_metrics(self, reset: bool = True) -> dict[str, Tensor]:
        """Means over the updates since the last call: ``flip/``, ``backforth/``, ``dead/``;
        and the current ``silent/``, ``qerr/``, ``entropy/`` (0-d tensors)."""
        return self._means("win", "flip", reset)

    def epoch_metrics(self, reset: bool = True) -> dict[str, Tensor]:
        """Epoch means (``oscillation/``: ReBNN's epoch-wise ratio; ``backforth/``, ``dead/``)
        and the current ``silent/``, ``qerr/``, ``entropy/`` (0-d tensors)."""
        return self._means("ep", "oscillation", reset)

    def result(self, reset: bool = False) -> dict[str, float]:
        """:meth:`step_metrics` as Python floats (reads the values back to the host)."""
        return {k: float(v) for k, v in self.step_metrics(reset=reset).items()}

    # -- per-weight views -----------------------------------------------------------------------
    def flip_counts(self) -> dict[str, Tensor]:
        """Per layer: flips of each weight since the start (int32, saturating at 32767)."""
        return {
            n: _decode(self._state(i))[0].to(torch.int32) for i, n in enumerate(self.layer_names)
        }

    def never_flipped(self) -> dict[str, Tensor]:
        """Per layer: True where the weight never flipped (OvSW's silent weights)."""
        return {n: c == 0 for n, c in self.flip_counts().items()}

    def signs(self) -> dict[str, Tensor]:
        """Per layer: the sign at the last update (int8, ±1)."""
        return {
            n: torch.where(_decode(self._state(i))[1], -1, 1).to(torch.int8)
            for i, n in enumerate(self.layer_names)
        }

    def last_flip_steps(self) -> dict[str, Tensor]:
        """Per layer: the step of each weight's last flip (int64, -1 = never), rounded down to
        the stored resolution of ``2**shift`` steps."""
        out = {}
        for i, (n, c) in enumerate(self.flip_counts().items()):
            t, _ = _decode(self._last(i))
            step = self.start_step + (t.to(torch.int64) << self.shift)
            out[n] = torch.where(c > 0, step, -1)
        return out

    @torch.no_grad()
    def histograms(self, bins: int = 64) -> list[dict[str, Any]]:
        """Latent-weight histograms: every tracked layer, and output channel 0 of the first.

        Each record: ``layer``, ``kind`` (``layer`` or ``channel0``), ``range`` [lo, hi]
        (symmetric, ``max|w|``), ``counts`` (``bins`` equal-width bins).
        """
        records = []
        for i, (name, w) in enumerate(zip(self.layer_names, self._weights(), strict=True)):
            kinds = [("layer", w)] + ([("channel0", w[0])] if i == 0 else [])
            for kind, values in kinds:
                values = values.float().flatten()
                r = max(float(values.abs().max()), 1e-12)
                counts = torch.histc(values, bins=bins, min=-r, max=r)
                records.append(
                    {
                        "layer": name,
                        "kind": kind,
                        "range": [-r, r],
                        "counts": [int(c) for c in counts.tolist()],
                    }
                )
        return records

    def dump(self) -> dict[str, Tensor]:
        """The per-weight state as CPU tensors (what ``dynamics/<stage>-flips.safetensors``
        holds): ``<layer>/flips`` (int16), ``<layer>/last_flip`` (int64), ``<layer>/sign`` (int8)."""
        out = {}
        counts, last, signs = self.flip_counts(), self.last_flip_steps(), self.signs()
        for n in self.layer_names:
            out[f"{n}/flips"] = counts[n].to(torch.int16).cpu().contiguous()
            out[f"{n}/last_flip"] = last[n].cpu().contiguous()
            out[f"{n}/sign"] = signs[n].cpu().contiguous()
        return out
