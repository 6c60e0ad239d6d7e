"""``TensorLoader``: a whole split held as one tensor, shuffled, sharded and augmented per batch.

Used for CIFAR (uint8 images, augmented on the training device), the digits and the
synthetic data (float features, no augmentation).

Determinism and DDP. The order of epoch ``e`` is one permutation drawn on the CPU from a
generator seeded with ``(seed, e)``, identical on every process; the crop/flip parameters of
the epoch are drawn likewise, one per position of that order. For training the order is cut
to whole global batches (``drop_last``) and every global batch is split into ``world_size``
contiguous chunks of ``batch_size // world_size``: rank ``r`` takes chunk ``r``. The union of
the ranks' ``b``-th batches is therefore exactly the ``b``-th batch of a single-process run
with the same global batch, same samples and same augmentation, whatever ``world_size``.
Evaluation is not shuffled and not dropped: rank ``r`` takes the contiguous slice
``[r * n // world_size, (r + 1) * n // world_size)`` (disjoint, covering; sizes differ by at
most one, so ranks may run a different number of evaluation batches: reduce the metric sums
after the loop, not per batch).

``in_memory=False`` keeps the tensors on the CPU and moves each batch (still uint8) to the
device, where it is augmented exactly as on the fast path: the batches are bit-identical.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from bnnkit.data.augment import CropFlip, ImageTransform
from bnnkit.data.config import DataConfig
from bnnkit.errors import ConfigError


def stream_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit generator seed from ``(seed, epoch, stream)`` (stable across runs/platforms)."""
    key = f"bnnkit:{stream}:{int(seed)}:{int(epoch)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def per_process_batch(batch_size: int, world_size: int, what: str = "data.batch_size") -> int:
    """``batch_size // world_size``; a :class:`ConfigError` unless it divides evenly."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if batch_size < world_size or batch_size % world_size:
        raise ConfigError(
            f"is the global batch and must be a multiple of the number of processes ({world_size})",
            location=what.split("."), value=batch_size,
            allowed=f"e.g. {max(1, batch_size // world_size) * world_size}",
        )  # fmt: skip
    return batch_size // world_size


class TensorLoader:
    """An epoch-wise loader over ``(x, y)`` tensors that implements ``bnnkit.data.Loader``.

    Args:
        x: the split's samples, ``(N, C, H, W)`` uint8 images or ``(N, ...)`` float features.
        y: ``(N,)`` integer class indices.
        batch_size: **global** batch size (summed over processes).
        train: training loader (shuffle per epoch, drop the last partial batch, augment) or
            evaluation loader (fixed order, keep every sample, no augmentation).
        transform: uint8 images -> normalized float (crop/flip used only when ``train``);
            default for uint8 data: scale to [0, 1]. Must be None for float data (float data
            is returned as float32, as given).
        device: training device; batches are yielded there.
        seed: run seed; epoch ``e`` depends only on ``(seed, e)``.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes.
        in_memory: keep the tensors on ``device`` (fast path) or on the CPU, moving each batch.

    Raises:
        ValueError: mismatched ``x``/``y``, a batch size not divisible by ``world_size``, a bad
            rank, or a training split smaller than one global batch.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        train: bool,
        transform: ImageTransform | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        in_memory: bool = True,
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        what = "data.batch_size" if train else "data.eval_batch_size"
        self.batch_size = per_process_batch(batch_size, world_size, what)
        self.global_batch_size = batch_size
        self.train, self.seed, self.rank, self.world_size = train, seed, rank, world_size
        self.device = torch.device(device)
        storage = self.device if in_memory else torch.device("cpu")
        if x.dtype == torch.uint8:
            channels = x.shape[1]
            transform = transform or ImageTransform((0.0,) * channels, (1.0,) * channels)
            transform = transform.to(self.device)
        elif transform is not None:
            raise ValueError(f"a transform applies to uint8 images only; x is {x.dtype}")
        else:
            x = x.to(torch.float32)
        self.transform = transform
        self.x = x.to(storage)
        self.y = y.to(device=storage, dtype=torch.int64)
        self.dataset_size = n = x.shape[0]
        if train:
            self._steps = n // batch_size
            if self._steps == 0:
                raise ConfigError(
                    f"the training split has {n} samples, fewer than one global batch "
                    f"({batch_size}); lower data.batch_size or raise data.train_limit"
                )
            self.num_samples = self._steps * self.batch_size
        else:
            start, stop = rank * n // world_size, (rank + 1) * n // world_size
            self._eval_range = (start, stop)
            self.num_samples = stop - start
            self._steps = math.ceil(self.num_samples / self.batch_size)
        self.epoch, self.start = 0, 0
        self._plan: tuple[int, Tensor, CropFlip | None] | None = None

    def __len__(self) -> int:
        """Batches per epoch on this process."""
        return self._steps

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the shuffling / augmentation stream of ``epoch`` (call before iterating); the
        next iteration begins at batch ``start`` (a run resumed inside the epoch)."""
        if not 0 <= start <= self._steps:
            raise ValueError(f"set_epoch: start = {start}; the epoch has {self._steps} batches")
        self.epoch, self.start = int(epoch), int(start)

    def close(self) -> None:
        """Nothing to release: the data is a tensor."""

    def epoch_indices(self) -> Tensor:
        """Sample indices this process visits in the current epoch, in order (on the CPU)."""
        return self._epoch_plan()[1].cpu()

    def _epoch_plan(self) -> tuple[int, Tensor, CropFlip | None]:
        if self._plan is not None and self._plan[0] == self.epoch:
            return self._plan
        params = None
        if not self.train:
            start, stop = self._eval_range
            order = torch.arange(start, stop)
        else:
            total, shape = self._steps * self.global_batch_size, (self._steps, self.world_size, -1)
            gen = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, "shuffle"))
            perm = torch.randperm(self.dataset_size, generator=gen)[:total]
            order = perm.view(shape)[:, self.rank].reshape(-1)
            if self.transform is not None and self.transform.random:
                gen.manual_seed(stream_seed(self.seed, self.epoch, "augment"))
                drawn = self.transform.draw(total, gen, "cpu")
                params = drawn[torch.arange(total).view(shape)[:, self.rank].reshape(-1)]
                params = params.to(self.device)
        self._plan = (self.epoch, order.to(self.x.device), params)
        return self._plan

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        _, order, params = self._epoch_plan()
        size = self.batch_size
        non_blocking = self.device.type == "cuda"
        start, self.start = self.start, 0  # a start applies to one iteration
        for step in range(start, self._steps):
            index = order[step * size : (step + 1) * size]
            xb = self.x.index_select(0, index)
            yb = self.y.index_select(0, index)
            if xb.device != self.device:
                xb = xb.to(self.device, non_blocking=non_blocking)
                yb = yb.to(self.device, non_blocking=non_blocking)
            if self.transform is not None:
                xb = self.transform(
                    xb, params[step * size : (step + 1) * size] if params is not None else None
                )
            yield xb, yb

    def __repr__(self) -> str:
        kind = "train" if self.train else "eval"
        return (
            f"TensorLoader({kind}, samples={self.num_samples}/{self.dataset_size}, "
            f"batch={self.batch_size}x{self.world_size}, rank={self.rank}, "
            f"device={self.device}, transform={self.transform})"
        )


def build_loaders(
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    cfg: DataConfig,
    *,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> tuple[TensorLoader, TensorLoader]:
    """Training and validation :class:`TensorLoader` of a split pair, as ``cfg`` says.

    Applies ``cfg.train_limit`` / ``cfg.val_limit`` (first N samples), the global
    ``batch_size`` / ``eval_batch_size`` and ``in_memory``. For uint8 images ``stats`` is the
    ``(mean, std)`` of the normalization and the training loader crops (``crop_padding``) and
    flips (``flip``) when ``cfg.augment``; float data is passed through (``stats`` unused).
    """
    x_train, y_train = x_train[: cfg.train_limit], y_train[: cfg.train_limit]
    x_val, y_val = x_val[: cfg.val_limit], y_val[: cfg.val_limit]
    train_tf = val_tf = None
    if x_train.dtype == torch.uint8:
        mean, std = stats or ((0.0,) * x_train.shape[1], (1.0,) * x_train.shape[1])
        padding = cfg.crop_padding if cfg.augment else 0
        flip = cfg.flip and cfg.augment
        train_tf = ImageTransform(mean, std, padding=padding, flip=flip, device=device)
        val_tf = ImageTransform(mean, std, device=device)
    common = dict(device=device, seed=seed, rank=rank, world_size=world_size)
    train = TensorLoader(
        x_train, y_train, batch_size=cfg.batch_size, train=True, transform=train_tf,
        in_memory=cfg.in_memory, **common,
    )  # fmt: skip
    val = TensorLoader(
        x_val, y_val, batch_size=cfg.global_eval_batch_size, train=False, transform=val_tf,
        in_memory=cfg.in_memory, **common,
    )  # fmt: skip
    return train, val


def standardize(train: Tensor, *others: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """Standardize float features per feature with the mean/std of ``train``.

    Features whose training std is below ``eps`` (constant features) are only centred.
    Returns the standardized ``train`` followed by ``others``, all float32.
    """
    train = train.to(torch.float32)
    mean = train.mean(dim=0)
    std = train.std(dim=0)
    std = torch.where(std < eps, torch.ones_like(std), std)
    return tuple(((t.to(torch.float32) - mean) / std) for t in (train, *others))
