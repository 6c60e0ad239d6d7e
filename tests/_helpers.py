"""Helpers shared by test modules (importable as ``_helpers`` through pytest's ``pythonpath``)."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Methods whose trained layers the packed export refuses (and why, as the refusal says it):
# AdaBin's affine binary sets; RBNN's per-sample input centring (rbnn with center_inputs false
# exports). Every other binary method must export exactly.
NOT_PACKED = {
    "adabin": r"AdaBin's binary sets \{c - d, c \+ d\} are affine",
    "rbnn": r"centres each input sample by its own mean",
}


def packed_methods() -> list[str]:
    """The registered binary methods the packed export handles."""
    import bnnkit

    return [m for m in bnnkit.list_methods() if m != "float" and m not in NOT_PACKED]


def merged(base: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A deep copy of the recipe ``base`` with each given section merged into its own (a
    section given as a non-dict value replaces it)."""
    out = copy.deepcopy(base)
    for key, value in sections.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


# The run tests' recipe: a binary MLP on synthetic data (8 steps per epoch, 3 epochs).
SYNTHETIC_MLP: dict[str, Any] = {
    "data": {"name": "synthetic", "synthetic_shape": [12], "synthetic_classes": 4,
             "synthetic_train": 256, "synthetic_val": 64, "batch_size": 32},
    "model": {"name": "mlp", "in_features": 12, "hidden": 32, "depth": 2},
    "method": {"name": "reactnet"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "training": {"epochs": 3, "seed": 3},
    "logging": {"log_every": 3, "progress": "off", "tensorboard": False},
}  # fmt: skip


def events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    """The ``kind`` events (``train`` / ``epoch``) of a run's ``metrics.jsonl``, every line parsed."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == kind]


def sample_input(name: str, batch: int = 2) -> torch.Tensor:
    """A seeded input for registered model ``name`` (ImageNet models at 64 px, to stay fast)."""
    from bnnkit.models.registry import MODELS

    size = MODELS.get(name).input_size
    if len(size) == 3 and size[1] > 64:
        size = (size[0], 64, 64)
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(1))


def trained_like(name: str, method: str, classes: int = 10) -> nn.Module:
    """Model ``name`` with ``method`` attached and non-trivial BN statistics, scales and shifts
    (eval mode), as a trained one would have."""
    import bnnkit

    torch.manual_seed(0)
    model = bnnkit.binarize_(
        bnnkit.create_model(name, num_classes=classes), bnnkit.get_method(method)
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        for n, p in model.named_parameters():
            if n.endswith("input_binarizer.bias"):
                p.uniform_(-0.2, 0.2)  # RSign / ReCU shifts
    return model.eval()


def write_batch(path: Path, data: np.ndarray, labels: list[int], label_key: str) -> None:
    """A CIFAR batch file like the official ones (Python-2 style bytes keys)."""
    with open(path, "wb") as f:
        pickle.dump({b"data": data, label_key.encode(): labels, b"batch_label": b"x"}, f, 2)


def write_fake(root: Path, name: str = "cifar10", n: int = 3, seed: int = 0) -> dict:
    """A tiny CIFAR data set in the official layout under ``root`` (train file ``i`` has
    ``n + i`` images); returns the arrays written."""
    from bnnkit.data import cifar as cifar_mod

    spec = cifar_mod.CIFAR[name]
    folder = root / spec.folder
    folder.mkdir(parents=True)
    rng = np.random.RandomState(seed)
    written = {}
    for i, f in enumerate((*spec.train_files, *spec.test_files)):
        data = rng.randint(0, 256, (n + i, 3072)).astype(np.uint8)
        labels = rng.randint(0, spec.num_classes, n + i).tolist()
        write_batch(folder / f, data, labels, spec.label_key)
        written[f] = (data, labels)
    return written


# -- references for the per-equation tests, written from the specs (never from bnnkit) ---------


def ref_sign(x: torch.Tensor) -> torch.Tensor:
    """Two-valued sign, sign(0) = +1 (bnnkit's convention), dtype kept."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class RefApproxSign(torch.autograd.Function):
    """Bi-Real's ApproxSign: forward :func:`ref_sign`, backward max(0, 2 - 2|x|)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ref_sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)
