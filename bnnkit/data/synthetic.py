"""Synthetic class-conditional Gaussian data: learnable, tiny, identical on every call.

Sample ``i`` of class ``c`` is ``mu_c + noise`` with unit-variance Gaussian noise. The class
means are drawn once from a fixed seed with unit amplitude per element, and for image-shaped
data (``(C, H, W)``) they are piecewise constant on a coarse grid of at most 4 x 4 cells per
channel, so that convolutions and pooling see the class signal as well as an MLP does.
Labels are balanced (``i % classes``, then shuffled). Everything is drawn with
``numpy.random.RandomState(SEED)`` (a stream numpy keeps stable across versions), so the
data do not depend on the run seed, the device or the torch version.

Features are float32 (no augmentation). With ``data.normalize`` other than ``none`` they are
standardized per feature with the training split's mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from bnnkit.data.base import DataBundle
from bnnkit.data.config import DataConfig
from bnnkit.data.memory import build_loaders, standardize

SEED = 0
GRID = 4


def _class_means(rng: np.random.RandomState, shape: tuple[int, ...], classes: int) -> np.ndarray:
    if len(shape) != 3:
        return rng.standard_normal((classes, *shape))
    c, h, w = shape
    gh, gw = min(GRID, h), min(GRID, w)
    coarse = rng.standard_normal((classes, c, gh, gw))
    rows = np.arange(h) * gh // h
    cols = np.arange(w) * gw // w
    return coarse[:, :, rows[:, None], cols[None, :]]


def make_synthetic(
    shape: Sequence[int],
    classes: int,
    num_train: int,
    num_val: int,
    *,
    normalize: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The synthetic splits ``(x_train, y_train, x_val, y_val)`` (float32 / int64 tensors).

    Args:
        shape: sample shape, e.g. ``(3, 32, 32)`` or ``(64,)``.
        classes: number of classes.
        num_train: training samples.
        num_val: validation samples.
        normalize: standardize per feature with the training mean/std.
    """
    shape = tuple(int(s) for s in shape)
    rng = np.random.RandomState(SEED)
    means = _class_means(rng, shape, classes)

    def split(n: int) -> tuple[Tensor, Tensor]:
        labels = rng.permutation(np.arange(n) % classes)
        x = means[labels] + rng.standard_normal((n, *shape))
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))

    x_train, y_train = split(num_train)
    x_val, y_val = split(num_val)
    if normalize:
        x_train, x_val = standardize(x_train, x_val)
    return x_train, y_train, x_val, y_val


def build_synthetic(
    cfg: DataConfig,
    *,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
) -> DataBundle:
    """Loaders over :func:`make_synthetic` of ``cfg.synthetic_*`` (float, on ``device``)."""
    x_train, y_train, x_val, y_val = make_synthetic(
        cfg.synthetic_shape, cfg.synthetic_classes, cfg.synthetic_train, cfg.synthetic_val,
        normalize=cfg.normalize != "none",
    )  # fmt: skip
    train, val = build_loaders(
        x_train, y_train, x_val, y_val, cfg,
        device=device, rank=rank, world_size=world_size, seed=seed,
    )  # fmt: skip
    return DataBundle("synthetic", train, val, cfg.synthetic_classes, tuple(cfg.synthetic_shape))
