"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint holds the model (method buffers and trackers included, since they are module
buffers), optimizer, GradScaler, the training position (stage, epoch, step: the learning rate
is a pure function of it), every RNG state, the best metrics so far and the resolved config.
A crash or kill during a save leaves the previous file intact: the data goes to a temporary
file in the same folder, is flushed to disk, and replaces the target with ``os.replace``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bnnkit._io import atomic_write, atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)
from bnnkit._version import __version__
from bnnkit.nn import BinaryLayer

FORMAT = "bnnkit-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used here; the message says why and what to do."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`bnnkit._io.atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


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


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's ``checkpoints/best.pt`` (else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        return best if best.is_file() else path / "checkpoints" / "last.pt"
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a bnnkit checkpoint safely (``weights_only=True``); a run directory means its
    ``checkpoints/last.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable bnnkit checkpoint: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bnnkit checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer bnnkit ({ckpt.get('bnnkit_version')})"
        )
    return ckpt


def make_checkpoint(**fields: Any) -> dict[str, Any]:
    """A checkpoint dict with the format marker and versions."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bnnkit_version": __version__,
        "torch_version": str(torch.__version__),
        **fields,
    }


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
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    return missing, unexpected, shapes


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load; on mismatch raise a ``CheckpointError`` listing the mismatched keys."""
    missing, unexpected, shapes = _compare(model, state)
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source} does not match this model ({type(model).__name__}): "
            f"{_mismatch_message(missing, unexpected, shapes)}. Was it written for another "
            "model, method or number of classes?"
        )
    model.load_state_dict(state)


def load_stage_init(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Initialise a stage's model from the previous stage's weights.

    Parameters the new method adds (e.g. a learnable scale) may be missing and keep their
    fresh initialisation; they are returned. But a binary layer whose latent weight is not
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
    return missing
