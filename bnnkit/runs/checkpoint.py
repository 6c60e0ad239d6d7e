"""The checkpoint format: one dataclass, :class:`Checkpoint`, written atomically and loaded with
``torch.load(weights_only=True)`` (nothing in a checkpoint is executed).

A checkpoint holds the model (method state, sign histories and trackers included, as module
buffers), optimizer, GradScaler, the training position (stage, epoch, step: the learning rate
is a pure function of it), every RNG state, the best metrics so far, the resolved config and
the raw recipe, so that a resumed run continues the same curve.

Format versions: 2 (this one) keeps each method part's state under its name
(``<layer>.method_state.<method>.<buffer>``) and one sign history per binary layer
(``<layer>.sign_history.negative`` / ``.flipped``). Version 1 (bnnkit before the split of the
upper half) kept one ``method_state`` module per layer, ReBNN's previous signs
(``prev_sign``) and OvSW's float copy of the weights (``weight_prev``); it loads: the keys are
renamed, and the sign history is rebuilt from the weights (and OvSW's last flips from
``weight_prev``), exactly. A newer version is refused.
"""

from __future__ import annotations

import dataclasses
import errno
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bnnkit._io import atomic_write
from bnnkit._version import __version__
from bnnkit.errors import BnnkitError
from bnnkit.nn import BinaryLayer, binary_layers, reset_sign_history

FORMAT = "bnnkit-checkpoint"
FORMAT_VERSION = 3  # 2: per-part method state, the sign history; 3: step checkpoints
# (progress.batch / progress.partial, the trackers' running sums); format 2 reads as is
_V1_REPLACED = ("prev_sign", "weight_prev", "primed")  # buffers the sign history replaced


class CheckpointError(BnnkitError, RuntimeError):
    """A checkpoint that cannot be used here; the message says why and what to do."""


def rng_state() -> dict[str, Any]:
    """Every RNG the loop uses, in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


@dataclass
class Checkpoint:
    """Everything a resumed run needs, and what ``bnnkit eval`` / ``export`` read.

    Attributes:
        recipe: the raw recipe (validated again, with overrides, on resume).
        config: the resolved recipe (plain data).
        stage_index, stage_name: the stage this checkpoint was written in.
        model_spec: ``{"name", "options", "num_classes"}``: how to build the model again.
        method: the stage's method as its recipe form (``Method.to_config()``).
        model: the model's ``state_dict``.
        optimizer, scaler: their ``state_dict`` (``scaler`` None without a GradScaler).
        progress: the stage's :class:`~bnnkit.training.StageProgress` as a dict.
        rng: :func:`rng_state`.
        stage_results: the results of the finished stages.
        seconds: training time so far.
        dynamics: the trackers' ``state_dict``, or None.
        upgraded_from: the format version the file was written in, when older (the model
            state was renamed on load, see the module docstring); None otherwise.
    """

    recipe: dict[str, Any]
    config: dict[str, Any]
    stage_index: int
    stage_name: str
    model_spec: dict[str, Any]
    method: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    progress: dict[str, Any]
    rng: dict[str, Any]
    stage_results: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    scaler: dict[str, Any] | None = None
    dynamics: dict[str, Any] | None = None
    bnnkit_version: str = __version__
    torch_version: str = str(torch.__version__)
    upgraded_from: int | None = field(default=None, compare=False)
    _v1_weight_prev: dict[str, torch.Tensor] = field(
        default_factory=dict, repr=False, compare=False
    )

    def to_dict(self) -> dict[str, Any]:
        """The file's content: the format marker, the version and every field."""
        skip = {"upgraded_from", "_v1_weight_prev"}
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip
        }
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **data}

    def save(self, path: str | Path) -> Path:
        """Write atomically (a crash leaves the previous file intact)."""
        return atomic_write(path, lambda f: torch.save(self.to_dict(), f))

    @classmethod
    def from_dict(cls, data: Any, source: str | Path) -> Checkpoint:
        """A checkpoint from a file's content; older formats are upgraded, newer refused."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{source} is not a bnnkit checkpoint (no '{FORMAT}' marker)")
        version = data.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source} has checkpoint format {version}, written by a newer bnnkit "
                f"({data.get('bnnkit_version')}); this bnnkit ({__version__}) reads formats up to "
                f"{FORMAT_VERSION}: upgrade bnnkit (pip install -U bnnkit)"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"upgraded_from", "_v1_weight_prev"}
        missing = sorted(n for n in names if n not in data and cls._required(n))
        if missing:
            raise CheckpointError(
                f"{source} is not a complete bnnkit checkpoint (missing {missing})"
            )
        ckpt = cls(**{k: v for k, v in data.items() if k in names})
        if version < 2:
            ckpt._upgrade_v1()
        return ckpt

    @classmethod
    def _required(cls, name: str) -> bool:
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING

    def _upgrade_v1(self) -> None:
        """Format 1 -> 2: ``method_state.<buf>`` -> ``method_state.<method>.<buf>``; ReBNN's
        ``prev_sign`` and ``primed`` dropped (the sign history is rebuilt from the weights at
        load); OvSW's ``weight_prev`` kept aside to rebuild the last step's flips."""
        part = self.method["name"]
        state: dict[str, torch.Tensor] = {}
        for key, value in self.model.items():
            if ".method_state." not in key:
                state[key] = value
                continue
            layer, buf = key.split(".method_state.", 1)
            if buf == "weight_prev":
                self._v1_weight_prev[layer] = value
            elif buf not in _V1_REPLACED:
                state[f"{layer}.method_state.{part}.{buf}"] = value
        self.model, self.upgraded_from = state, 1

    def load_model(self, model: nn.Module, source: str) -> None:
        """Load the model state strictly (a :class:`CheckpointError` lists any mismatch); an
        upgraded format-1 state also rebuilds every binary layer's sign history."""
        if self.upgraded_from is None:
            load_model_state(model, self.model, source)
            return
        histories = {k for k in model.state_dict() if ".sign_history." in k}
        load_model_state(model, self.model, source, ignore=histories)
        with torch.no_grad():
            for name, layer in binary_layers(model):
                if layer.sign_history is None:
                    continue
                layer.sign_history.reset(layer.sign_input())
                prev = self._v1_weight_prev.get(name)
                if prev is not None:  # OvSW: the flips of the step before the checkpoint
                    w = layer.weight.detach()
                    layer.sign_history.flipped.copy_((w < 0) != (prev.to(w.device) < 0))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    mmap: bool = False) -> Checkpoint:  # fmt: skip
    """Load a bnnkit checkpoint safely (``weights_only=True``); a run directory means its
    ``checkpoints/last.pt``. ``mmap`` maps the tensors instead of reading them (cheap, to
    look at a checkpoint's position)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a bnnkit checkpoint")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:
        raise CheckpointError(f"{path} is not a bnnkit checkpoint ({_load_reason(err)}); do not "
                              "load it with pickle or weights_only=False: a file that fails "
                              "the safe load can run code when unpickled") from None  # fmt: skip
    return Checkpoint.from_dict(data, path)


def _load_reason(err: Exception) -> str:
    """Why torch's safe load failed, in a few words (torch's own text advises loading unsafely
    and filing a PyTorch issue, which is wrong for a file that is not a checkpoint)."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it refers to Python code ({found.group(1)}), which a checkpoint never does"
    if "Weights only load failed" in text:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        return "its bytes are not a torch checkpoint" + (f" ({detail.group(1).strip()})"
                                                          if detail else "")  # fmt: skip
    cut = isinstance(err, OSError) and err.errno == errno.EINVAL  # a seek past a cut end
    if cut or "zip archive" in text or "central directory" in text or "EOF" in text or not text:
        return "it is cut short or not a torch zip archive"
    first = text.strip().splitlines()[0]
    if len(first) < 24:  # pickle's bare codes ("101", "invalid load key")
        return f"its bytes are not a torch checkpoint: {type(err).__name__} {first}"
    return first[:200]


def _mismatch_message(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    def head(keys: list[str]) -> str:
        return ", ".join(keys[:12]) + (f" ... (+{len(keys) - 12} more)" if len(keys) > 12 else "")

    parts = []
    if missing:
        parts.append(f"missing in the checkpoint ({len(missing)}): {head(missing)}")
    if unexpected:
        parts.append(f"not in the model ({len(unexpected)}): {head(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch ({len(shapes)}): {head(shapes)}")
    return "; ".join(parts)


def _compare(
    model: nn.Module, state: dict[str, torch.Tensor], ignore: set[str] = frozenset()
) -> tuple[list[str], list[str], list[str]]:
    own = {k: v for k, v in model.state_dict().items() if k not in ignore}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    return missing, unexpected, shapes


def load_model_state(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, *, ignore: set[str] = frozenset()
) -> None:
    """Strict load (keys in ``ignore`` may be absent); on mismatch a ``CheckpointError``
    listing the mismatched keys."""
    missing, unexpected, shapes = _compare(model, state, ignore)
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source} does not match this model ({type(model).__name__}): "
            f"{_mismatch_message(missing, unexpected, shapes)}. Was it written for another "
            "model, method or number of classes?"
        )
    model.load_state_dict(state, strict=not ignore)


def load_stage_init(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Initialise a stage's model from the previous stage's weights.

    Parameters the new method adds (e.g. a learnable scale) may be missing and keep their
    fresh initialisation; they are returned. Every sign history is rebuilt from the loaded
    weights (:func:`bnnkit.nn.reset_sign_history`: a stage starts with no flips). But a binary
    layer whose latent weight is not
    found (or has another shape) is an error, never a silent skip (the defect of ReActNet's
    ``strict=False`` step-2 load, issue #39); so is any shape mismatch.
    """
    missing, unexpected, shapes = _compare(model, state)
    weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, BinaryLayer)}
    lost = sorted(weights & set(missing))
    if lost or shapes:
        raise CheckpointError(
            f"cannot start this stage from {source}: "
            + _mismatch_message(lost, [], shapes)
            + ". Binary-layer weights must come from the previous stage (same model)."
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in unexpected}, strict=False)
    reset_sign_history(model)
    return [k for k in missing if ".sign_history." not in k]
