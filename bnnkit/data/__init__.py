"""Data sets and loaders: ``build_data(cfg)`` returns a ``DataBundle`` of two ``Loader``s.

Data sets (``DataConfig.name``): ``digits`` (scikit-learn's 8x8 digits), ``synthetic``
(class-conditional Gaussians), ``cifar10`` / ``cifar100`` (official python layout, optional
MD5-checked download), ``imagenet`` (class folders; see :mod:`bnnkit.data.imagenet`).

Default data folder: ``~/.cache/bnnkit/<name>``, or ``$BNNKIT_DATA/<name>`` when the
environment variable ``BNNKIT_DATA`` is set; ``data.root`` overrides both.

The in-memory data sets (all but ImageNet) use :class:`TensorLoader`: the split is one tensor
on the training device, shuffled per epoch from ``(seed, epoch)``, sharded disjointly across
DDP processes and, for CIFAR training, cropped/flipped/normalized on the device per batch.
``in_memory: false`` keeps the tensors on the CPU and moves every batch (same batches).
"""

from __future__ import annotations

import torch

from bnnkit.data.augment import (
    DATASET_STATS,
    CropFlip,
    ImageTransform,
    augment_batch,
    crop_flip,
    draw_crop_flip,
    normalization_stats,
)
from bnnkit.data.base import DataBundle, Loader
from bnnkit.data.cifar import CIFAR_URLS, build_cifar, download_cifar, load_cifar
from bnnkit.data.config import DataConfig
from bnnkit.data.digits import build_digits, load_digits
from bnnkit.data.files import (
    DataCorruptError,
    DataNotFoundError,
    DownloadError,
    default_root,
)
from bnnkit.data.memory import TensorLoader, build_loaders
from bnnkit.data.synthetic import build_synthetic, make_synthetic

__all__ = [
    "CIFAR_URLS",
    "DATASET_STATS",
    "CropFlip",
    "DataBundle",
    "DataConfig",
    "DataCorruptError",
    "DataNotFoundError",
    "DownloadError",
    "ImageTransform",
    "Loader",
    "TensorLoader",
    "augment_batch",
    "build_cifar",
    "build_data",
    "build_digits",
    "build_loaders",
    "build_synthetic",
    "crop_flip",
    "default_root",
    "download_cifar",
    "draw_crop_flip",
    "load_cifar",
    "load_digits",
    "make_synthetic",
    "normalization_stats",
]


def build_data(
    cfg: DataConfig,
    *,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
) -> DataBundle:
    """Build the training and validation loaders of ``cfg.name``.

    Args:
        cfg: the ``data:`` section of a recipe.
        device: training device; batches are yielded there.
        rank: this process's rank (0 without DDP).
        world_size: number of processes; ``cfg.batch_size`` and the evaluation batch are
            global and must be multiples of it.
        seed: run seed; the batches of epoch ``e`` depend only on ``(seed, e)``.

    Returns:
        A :class:`DataBundle` (loaders, ``num_classes``, ``input_size``).

    Raises:
        DataNotFoundError: data files missing (the message says where to put them).
        DataCorruptError: a data file is malformed (the message names it).
        ImportError: an optional dependency is missing (the message says what to install).
        ValueError: invalid batch sizes for ``world_size``, or a split too small for a batch.
    """
    if not isinstance(cfg, DataConfig):
        raise TypeError(f"build_data expects a DataConfig, got {type(cfg).__name__}")
    if cfg.name == "imagenet":
        from bnnkit.data.imagenet import build_imagenet  # lazy: Pillow is needed only here

        return build_imagenet(cfg, device=device, rank=rank, world_size=world_size, seed=seed)
    builders = {
        "cifar10": build_cifar,
        "cifar100": build_cifar,
        "digits": build_digits,
        "synthetic": build_synthetic,
    }
    return builders[cfg.name](cfg, device=device, rank=rank, world_size=world_size, seed=seed)
