"""ImageNet-style image folders: ``root/train/<class>/*`` and ``root/val/<class>/*``.

Pipeline (torchvision-equivalent, see :mod:`bnnkit.data.transforms`):

- train: decode (Pillow, RGB) -> RandomResizedCrop(image_size, rrc_scale, ratio 3/4..4/3)
  -> PCA lighting (``pil``: on the uint8 image, as ReCU/ReActNet/ReBNN) -> horizontal flip
  -> uint8 tensor; on the device: ``/ 255`` -> PCA lighting (``tensor``: on [0, 1], as OvSW)
  -> normalize. With ``augment: false`` the training images get the validation transform.
- val: decode -> resize the shorter side to ``round(image_size * 256 / 224)`` -> centre crop.

Workers send uint8 images (4x less traffic than float32); the float conversion, the
tensor-space lighting offset (drawn in the worker) and the normalization run per batch on the
training device, which is the same arithmetic as ``ToTensor -> Lighting -> Normalize``.

Determinism: the epoch permutation is drawn from ``(seed, epoch)`` and every random draw of a
sample from its own generator seeded with ``(seed, epoch, index)``, so batches do not depend on
the number of workers, and a run resumed at an epoch boundary sees the same batches. The
random streams are numpy's, so the numbers differ from torchvision's (same distributions).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from bnnkit.data import transforms as T
from bnnkit.data.augment import normalization_stats
from bnnkit.data.base import DataBundle
from bnnkit.data.config import DataConfig
from bnnkit.data.files import DataCorruptError, DataNotFoundError, resolve_root
from bnnkit.errors import ConfigError

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
_SEED_MASK = (1 << 64) - 1
_LAYOUT = "root/train/<class>/<image> and root/val/<class>/<image>"


def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def scan_split(split_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class folders and image files of one split, in sorted order.

    Returns:
        ``(classes, files, labels)``: the sorted class folder names, the ``"<class>/<file>"``
        paths (a numpy string array, cheap to share with workers) sorted by class then name,
        and their int64 class indices.

    Raises:
        DataNotFoundError: the folder is missing, has no class folders, or a class folder
            holds no image (extensions: .jpeg .jpg .png .bmp .webp, any case).
    """
    if not split_dir.is_dir():
        raise DataNotFoundError(
            f"ImageNet split folder {split_dir} does not exist; expected the layout {_LAYOUT} "
            "(set data.root to the folder that holds train/ and val/)"
        )
    with os.scandir(split_dir) as it:
        entries = list(it)
    classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        loose = [e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS)]
        hint = f" ({len(loose)} images lie directly in it)" if loose else ""
        raise DataNotFoundError(
            f"{split_dir} has no class folders{hint}; put each class's images in its own "
            f"sub-folder: {_LAYOUT}"
        )
    files: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        with os.scandir(split_dir / name) as it:
            images = sorted(
                e.name for e in it if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
        if not images:
            empty.append(name)
        files.extend(f"{name}/{image}" for image in images)
        labels.extend([label] * len(images))
    if empty:
        raise DataNotFoundError(
            f"{len(empty)} class folder(s) of {split_dir} hold no image "
            f"(extensions {' '.join(IMAGE_EXTENSIONS)}, any case): {_listing(empty)}; add the "
            "images or remove the empty folders from both train/ and val/"
        )
    return classes, np.array(files), np.array(labels, dtype=np.int64)


def check_same_classes(train: list[str], val: list[str], root: Path) -> None:
    """Raise ``DataCorruptError`` listing the difference when the class folders differ."""
    if train == val:
        return
    missing = sorted(set(train) - set(val))
    extra = sorted(set(val) - set(train))
    raise DataCorruptError(
        f"the class folders of {root / 'train'} ({len(train)}) and {root / 'val'} ({len(val)}) "
        f"differ: missing in val/: [{_listing(missing)}]; only in val/: [{_listing(extra)}]. "
        "Both splits need the same class folders (the class index is the position in sorted "
        "order); for ImageNet val, sort the images into class folders first"
    )


def decode_rgb(path: str) -> Image:
    """Open ``path`` with Pillow, fully decode it and convert it to RGB.

    Raises:
        DataNotFoundError: the file no longer exists.
        DataCorruptError: the file cannot be decoded (corrupt, truncated, not an image).
    """
    pil_image = T.require_pil()
    try:
        with open(path, "rb") as f:
            img = pil_image.open(f)
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except FileNotFoundError as exc:
        raise DataNotFoundError(
            f"image {path} was listed when the data set was built but is gone now; restore it "
            "or rebuild the data (restart the run)"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataCorruptError(
            f"cannot decode image {path}: {exc}. The file is corrupt, truncated or not an "
            "image; replace it with a good copy (or delete it) and run again"
        ) from exc


class ImageFolderDataset(Dataset):
    """Images of one split; item ``(index, epoch)`` -> ``(uint8 (3, S, S), offset (3,), label)``.

    ``offset`` is the tensor-space lighting offset (zeros unless ``lighting_space`` is
    ``tensor``), added on the device after ``/ 255``. The sample's random draws come from a
    generator seeded with ``(seed, epoch, index)``, in the order crop, lighting, flip.
    """

    def __init__(
        self,
        split_dir: Path,
        files: np.ndarray,
        labels: np.ndarray,
        cfg: DataConfig,
        *,
        train: bool,
        seed: int,
    ) -> None:
        self.split_dir = str(split_dir)
        self.files, self.labels = files, labels
        self.augment = train and cfg.augment
        self.image_size = cfg.image_size
        self.rrc_scale = (float(cfg.rrc_scale[0]), float(cfg.rrc_scale[1]))
        self.lighting, self.lighting_space = float(cfg.lighting), cfg.lighting_space
        self.flip = cfg.flip
        self.seed = seed & _SEED_MASK

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        """Full path of sample ``index``."""
        return os.path.join(self.split_dir, str(self.files[index]))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor, int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        img = decode_rgb(self.path(index))
        offset = np.zeros(3)
        if not self.augment:
            img = T.resize_shorter(img, T.eval_resize_size(self.image_size))
            arr = np.asarray(T.center_crop(img, self.image_size))
        else:
            rng = np.random.default_rng([self.seed, 1, epoch, index])
            img = T.random_resized_crop(img, self.image_size, self.rrc_scale, rng)
            if self.lighting > 0:
                offset = T.lighting_offset(self.lighting, rng)
                if self.lighting_space == "pil":
                    img, offset = T.lighting_pil(img, offset), np.zeros(3)
            arr = np.asarray(img)
            if self.flip:
                arr = T.random_hflip(arr, rng)
        label = int(self.labels[index])
        return T.to_uint8_chw(arr), torch.from_numpy(offset.astype(np.float32)), label


class ShardedSampler(Sampler):
    """Disjoint per-rank shards of an epoch's sample order; yields ``(index, epoch)`` keys.

    Training (``shuffle=True``): the permutation of epoch ``e`` comes from ``(seed, e)``; it is
    cut to ``world_size * (n // world_size)`` samples, rank ``r`` takes positions
    ``r, r + world_size, ...`` and keeps whole batches only (the last partial batch is dropped),
    so every rank runs the same number of steps. Evaluation (``shuffle=False``): rank ``r``
    takes samples ``r, r + world_size, ...`` in order, nothing dropped or duplicated (ranks may
    differ by one sample). The epoch travels with each key, so persistent workers see it.
    """

    def __init__(
        self, n: int, *, rank: int, world_size: int, batch_size: int, shuffle: bool, seed: int
    ) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size
        self.batch_size, self.shuffle = batch_size, shuffle
        self.seed = seed & _SEED_MASK
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Epoch ``epoch``'s order; the next iteration skips its first ``skip`` samples."""
        if epoch < 0:
            raise ValueError(f"set_epoch: epoch = {epoch}; epochs count from 0")
        self.epoch, self.skip = int(epoch), int(skip)

    def indices(self) -> np.ndarray:
        """This rank's sample indices for the current epoch, in iteration order."""
        if not self.shuffle:
            return np.arange(self.rank, self.n, self.world_size)
        order = np.random.default_rng([self.seed, 0, self.epoch]).permutation(self.n)
        per_rank = self.n // self.world_size
        shard = order[self.rank : per_rank * self.world_size : self.world_size]
        return shard[: (per_rank // self.batch_size) * self.batch_size]

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.n, self.world_size))
        return (self.n // self.world_size // self.batch_size) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip, self.skip = self.epoch, self.skip, 0  # a skip applies to one iteration
        return iter([(int(i), epoch) for i in self.indices()[skip:]])


class FolderLoader:
    """A :class:`~bnnkit.data.base.Loader` over an :class:`ImageFolderDataset`.

    Yields ``(x, y)`` on ``device``: ``x`` float32 ``(B, 3, S, S)`` normalized, ``y`` int64.
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        sampler: ShardedSampler,
        *,
        batch_size: int,
        workers: int,
        device: torch.device,
        stats: tuple[Tensor, Tensor] | None,
    ) -> None:
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.device, self.stats = device, stats
        self.tensor_lighting = (
            dataset.augment and dataset.lighting > 0 and dataset.lighting_space == "tensor"
        )
        self.num_samples = len(sampler)
        self.dataset_size = len(dataset)
        self._non_blocking = device.type == "cuda"
        self._loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            drop_last=False,
        )

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= len(self):
            raise ValueError(f"set_epoch: start = {start}; the epoch has {len(self)} batches")
        self.sampler.set_epoch(epoch, start * self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        try:
            for x, offset, y in self._loader:
                x = x.to(self.device, non_blocking=self._non_blocking)
                y = y.to(self.device, non_blocking=self._non_blocking)
                off = offset.to(self.device, non_blocking=self._non_blocking)
                yield T.normalize(x, self.stats, off if self.tensor_lighting else None), y
        except Exception:
            # The exception's traceback holds the DataLoader iterator in a reference cycle;
            # left to the cyclic GC, its queues are finalized before its workers are told to
            # stop, and the shutdown then waits 5 s per worker. Stop the workers now.
            self.close()
            raise

    def close(self) -> None:
        """Stop the worker processes now (the next iteration starts fresh ones)."""
        iterator = getattr(self._loader, "_iterator", None)  # persistent workers' iterator
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._loader._iterator = None


def _local_batch(global_batch: int, world_size: int, field: str) -> int:
    if global_batch % world_size:
        raise ConfigError(
            f"is the global batch and must be divisible by the number of processes ({world_size})",
            location=("data", field), value=global_batch, allowed=f"a multiple of {world_size}",
        )  # fmt: skip
    return global_batch // world_size


def build_imagenet(
    cfg: DataConfig,
    *,
    device: torch.device | str,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
) -> DataBundle:
    """Build the training and validation loaders of an ImageNet-style folder.

    Args:
        cfg: the data section (``root``, batches, ``workers``, augmentation, limits).
        device: where batches are delivered (pinned memory and async copies on CUDA).
        rank: this process's rank under DDP.
        world_size: number of processes; global batches are split evenly between them.
        seed: seed of the shuffling and augmentation streams.

    Returns:
        A :class:`DataBundle` with ``input_size = (3, image_size, image_size)`` and
        ``num_classes`` = number of class folders (classes indexed in sorted name order).

    Raises:
        ImportError: Pillow is missing (install ``bnnkit[imagenet]``).
        DataNotFoundError: ``root``, ``train/`` or ``val/`` is missing, or holds no images.
        DataCorruptError: ``train/`` and ``val/`` class folders differ; at iteration, an
            image cannot be decoded (the message names the file).
        ValueError: bad ``rank``/``world_size``, a batch not divisible by ``world_size``, or
            fewer training images than one global batch.
    """
    T.require_pil()
    if not 0 <= rank < world_size:
        raise ValueError(f"rank = {rank} must be in [0, world_size = {world_size})")
    device = torch.device(device)
    root = resolve_root(cfg.root, "imagenet")
    if not root.is_dir():
        raise DataNotFoundError(
            f"ImageNet root {root} does not exist; set data.root to the folder that holds "
            f"train/ and val/ ({_LAYOUT})"
        )
    train_classes, train_files, train_labels = scan_split(root / "train")
    val_classes, val_files, val_labels = scan_split(root / "val")
    check_same_classes(train_classes, val_classes, root)
    train_files, train_labels = train_files[: cfg.train_limit], train_labels[: cfg.train_limit]
    val_files, val_labels = val_files[: cfg.val_limit], val_labels[: cfg.val_limit]

    train_batch = _local_batch(cfg.batch_size, world_size, "batch_size")
    eval_batch = _local_batch(cfg.global_eval_batch_size, world_size, "eval_batch_size")
    if len(train_files) < cfg.batch_size:
        raise ConfigError(
            f"data.batch_size = {cfg.batch_size} needs at least that many training images, "
            f"but {root / 'train'} gives {len(train_files)} (train_limit = {cfg.train_limit}); "
            "lower data.batch_size or use more images"
        )
    stats = T.stats_tensors(normalization_stats(cfg.normalize, "imagenet"), device)
    loaders = []
    for split, files, labels, train, batch in (
        ("train", train_files, train_labels, True, train_batch),
        ("val", val_files, val_labels, False, eval_batch),
    ):
        dataset = ImageFolderDataset(root / split, files, labels, cfg, train=train, seed=seed)
        sampler = ShardedSampler(
            len(dataset),
            rank=rank,
            world_size=world_size,
            batch_size=batch,
            shuffle=train,
            seed=seed,
        )
        loaders.append(
            FolderLoader(
                dataset, sampler, batch_size=batch, workers=cfg.workers, device=device, stats=stats
            )
        )
    return DataBundle(
        name="imagenet",
        train=loaders[0],
        val=loaders[1],
        num_classes=len(train_classes),
        input_size=(3, cfg.image_size, cfg.image_size),
    )
