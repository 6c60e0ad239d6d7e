"""The UCI 8x8 handwritten digits shipped with scikit-learn (1,797 images, no download).

scikit-learn is an optional dependency (``pip install "bnnkit[digits]"``) imported only when
the data set is built. Split: a fixed permutation (``numpy.random.RandomState(0)``, whose
stream numpy keeps stable across versions) of the 1,797 samples; the first 1,437 are the
training split, the last 360 (20 %) the validation split. Features: the 64 pixel counts
(0..16) divided by 16, then, unless ``data.normalize`` is ``none``, standardized per feature
with the mean/std of the full training split (constant pixels are only centred). The image
statistics of ``imagenet`` / ``cifar`` do not apply to these features: any value other than
``none`` standardizes. No augmentation (``data.augment`` is ignored).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bnnkit.data.base import DataBundle
from bnnkit.data.config import DataConfig
from bnnkit.data.memory import build_loaders, standardize
from bnnkit.errors import MissingDependencyError

NUM_SAMPLES = 1797
NUM_TRAIN = 1437
NUM_VAL = NUM_SAMPLES - NUM_TRAIN
SPLIT_SEED = 0


def _load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise MissingDependencyError(
            'the digits data set needs scikit-learn: pip install "bnnkit[digits]" '
            "(or pip install scikit-learn)"
        ) from exc
    bunch = load_digits()
    return np.asarray(bunch.data), np.asarray(bunch.target)


def load_digits(normalize: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fixed digits split: ``(x_train, y_train, x_val, y_val)``.

    ``x`` is float32 of shape ``(N, 64)``, ``y`` int64 in ``[0, 10)``; 1,437 training and
    360 validation samples.

    Args:
        normalize: standardize with the training mean/std (after dividing by 16).

    Raises:
        MissingDependencyError: scikit-learn is not installed (the message says how to install it).
    """
    data, target = _load_sklearn_digits()
    if data.shape != (NUM_SAMPLES, 64):
        raise ValueError(f"scikit-learn's digits have shape {data.shape}, expected (1797, 64)")
    order = np.random.RandomState(SPLIT_SEED).permutation(NUM_SAMPLES)
    x = torch.from_numpy(data[order] / 16.0).to(torch.float32)
    y = torch.from_numpy(target[order]).to(torch.int64)
    x_train, x_val = x[:NUM_TRAIN], x[NUM_TRAIN:]
    if normalize:
        x_train, x_val = standardize(x_train, x_val)
    return x_train, y[:NUM_TRAIN], x_val, y[NUM_TRAIN:]


def build_digits(
    cfg: DataConfig,
    *,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
) -> DataBundle:
    """Digits loaders (float features on ``device``); ``num_classes`` 10, ``input_size`` (64,)."""
    x_train, y_train, x_val, y_val = load_digits(normalize=cfg.normalize != "none")
    train, val = build_loaders(
        x_train, y_train, x_val, y_val, cfg,
        device=device, rank=rank, world_size=world_size, seed=seed,
    )  # fmt: skip
    return DataBundle("digits", train, val, 10, (64,))
