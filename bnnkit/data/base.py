"""What every data set builder returns: a ``DataBundle`` of two ``Loader``s."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


class Loader(Protocol):
    """An epoch-wise iterable of ``(x, y)`` batches already on the training device.

    ``x`` is float32 and normalized, ``y`` int64 class indices. Shuffling and augmentation of
    epoch ``e`` depend only on ``(seed, e)`` (set by ``set_epoch``), so a run resumed at an
    epoch boundary sees exactly the batches an uninterrupted run sees, and one resumed inside an
    epoch starts at its batch ``start``. Under DDP each process
    iterates over its own disjoint shard; training batches are full (the last partial
    batch is dropped), evaluation batches are not.
    """

    num_samples: int
    """Samples this process sees per epoch."""

    dataset_size: int
    """Samples in the split (all processes; training drops the last partial global batch)."""

    def __len__(self) -> int:
        """Batches per epoch on this process."""
        ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the shuffling / augmentation stream of ``epoch`` (call before iterating);
        the next iteration begins at batch ``start`` of it (``len`` stays the epoch's)."""
        ...

    def close(self) -> None:
        """Release workers and other resources (a no-op for in-memory loaders)."""
        ...


@dataclass
class DataBundle:
    """Training and validation loaders plus what the model needs to know."""

    name: str
    train: Loader
    val: Loader
    num_classes: int
    input_size: tuple[int, ...]

    def close(self) -> None:
        """Close both loaders (stops DataLoader worker processes)."""
        self.train.close()
        self.val.close()
